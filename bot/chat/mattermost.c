/*
 * mattermost.c - Mattermost over its WebSocket API, with buttons that call
 * baton back over HTTP.
 *
 * Connection (loop thread). A worker asks GET /api/v4/users/me once for
 * the bot's user id and username; the loop then opens
 * ws(s)://HOST/api/v4/websocket with the token in an Authorization header,
 * and sends an authentication_challenge as well once connected (some
 * proxies strip the header). Mattermost numbers the events it sends on a
 * connection (seq, 0 = hello) and keeps recent ones for a while after a
 * connection drops. So baton remembers the hello's connection_id and the
 * next seq it expects, and reconnects the way Mattermost's own webapp does,
 * with ?connection_id=ID&sequence_number=NEXT: the server then replays what
 * baton missed (and sends no hello). When the server has forgotten the
 * connection it starts a new one with a new hello, and baton carries on
 * from there (the events in between are lost; the log says so). A gap in
 * the numbers on a live connection is treated the same way as the webapp
 * treats it: close and resume, so the missing events are replayed. A
 * dropped connection is reopened with backoff (1 s doubling to 30 s, with
 * jitter).
 *
 * Events. The loop keeps only the `posted` events baton should answer
 * (direct messages, configured channels, mentions of the bot) and hands
 * each to a worker; when the workers' queue is full it waits in a bounded
 * backlog that the tick retries, since Mattermost, unlike Slack, never
 * delivers an event twice. A worker claims the post in the store
 * ("mattermost:post:<id>") before acting, so a replay, or the same post
 * seen by another baton process, is handled once.
 *
 * Buttons. A plan card is a post with one message attachment whose buttons
 * carry, in their integration context (which Mattermost keeps from
 * clients), the signed decision token and an action_secret: an HMAC of the
 * approval and the token under a key derived from the bot's access token,
 * which every baton process serving this bot shares. Mattermost signs
 * nothing, so a callback is believed only when its action_secret verifies
 * (checked on the loop, before any work), the post it names is one baton
 * recorded for that approval, and the pipeline accepts the token. The reply
 * replaces the clicked post with the fresh card at once; chat.c's card
 * updates (PUT /posts/{id}/patch) keep every other post of the approval in
 * step.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "bot/chat/chat_int.h"
#include "bot/log.h"
#include "bot/store/store.h"

#define RX_MAX (1u << 20) /* one WebSocket frame */
#define OUTQ_MAX 16       /* frames waiting to be written */
#define BACKLOG_MAX 256   /* events waiting for a free worker */
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 30000
#define HELLO_TIMEOUT_MS 15000 /* a fresh connection that never says hello */
#define MESSAGE_MAX 16383      /* a post's message (Mattermost counts characters) */
#define CARD_TEXT_MAX 12000    /* an attachment's text */
#define RESULT_MAX 3000        /* a result shown on a card */
#define ROWS_MAX 20            /* table rows shown */
#define COLS_MAX 10            /* table columns shown */
#define CELL_MAX 200           /* bytes of one table cell */
#define REQUEST_MAX 4000       /* bytes of a request's text handled */
#define CALLBACK_BODY_MAX (64u << 10)
#define ID_MAX 64     /* Mattermost ids are 26 characters */
#define TOKEN_MAX 512 /* a decision token (approvals.h) */
#define TRIGGER_MAX 4096

enum { OP_ME, OP_POST, OP_CLICK };

static const char ACTION_KEY_LABEL[] = "baton mattermost action key v1";
static const char ACTION_LABEL[] = "baton mattermost action v1";

struct mconn {
    struct bt_chat__conn hdr;
    struct mattermost *mm;
    struct lws *wsi;
    bool established;
    bool hello;   /* the server said hello (a fresh session) */
    bool resumed; /* opened with connection_id + sequence_number */
    bool closed;  /* being closed by baton */
    int action_seq;
    int64_t opened_ms;
    bt_buf rx;
    bool rx_skip; /* the rest of an oversized frame */
    json_t *outq; /* strings to write */
    char *path;   /* kept for lws's pointers */
};

struct mattermost {
    struct bt_chat__surface sf;
    /* settings: read-only once built, shared with the workers */
    char *api;   /* https://host[:port][/prefix]/api/v4 */
    char *token; /* the bot's personal access token */
    char *callback_url;
    char *callback_path;
    json_t *channels;
    unsigned char action_key[32];
    char *ws_host; /* where the WebSocket goes */
    char *ws_hosthdr;
    char *ws_path;
    int ws_port;
    bool ws_tls;
    /* loop thread */
    char *bot_id, *bot_name; /* from users/me */
    struct mconn *conn;
    bool fetching;
    bool stopped;
    int64_t next_open_ms;
    int64_t backoff_ms;
    char *connection_id; /* the server's session, from hello */
    long long next_seq;  /* the seq expected next */
    bool have_seq;
    json_t *backlog; /* task inputs waiting for a worker */
    unsigned long long events, reconnects, dropped;
};

/* ---- settings ---------------------------------------------------------------------- */

/* The path of an http(s) URL without query or fragment (new string), or
 * NULL when there is none. */
static char *url_path(const char *url)
{
    const char *rest = strstr(url, "://");
    if (!rest)
        return NULL;
    rest += 3;
    size_t n;
    bt_chat__url_host(rest, &n);
    const char *p = strchr(rest + n, '/');
    const char *q = strpbrk(rest + n, "?#");
    if (!p || (q && q < p))
        return NULL;
    return bt_strndup(p, strcspn(p, "?#"));
}

static bool is_id(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > ID_MAX)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9')))
            return false;
    return true;
}

bool bt_chat__mattermost_check(const bt_config *cfg, const json_t *s, bt_diag *d)
{
    size_t before = bt_diag_count(d);
    const bt_yaml_doc *doc = bt_config_main(cfg);
    static const char *const keys[] = {"url", "token_env", "callback_url", "channels", NULL};
    bt_check_keys(d, doc, s, keys);
    const char *url = bt_check_string(d, doc, s, "url", true);
    if (url && !bt_chat__url_acceptable(url))
        bt_diag_at(d, doc, s, "chat.mattermost.url",
                   "'%s' must be https:// (plain http only on loopback, for tests)", url);
    bt_check_string(d, doc, s, "token_env", false);
    /* Mattermost POSTs button clicks to this URL, so it is baton's own
     * address as the Mattermost server reaches it, and its path is where
     * baton listens for them. */
    const char *cb = bt_check_string(d, doc, s, "callback_url", true);
    if (cb) {
        char *path = url_path(cb);
        if (strncmp(cb, "http://", 7) != 0 && strncmp(cb, "https://", 8) != 0)
            bt_diag_at(d, doc, s, "chat.mattermost.callback_url",
                       "'%s' must be an http:// or https:// URL", cb);
        else if (!path || strcmp(path, "/") == 0)
            bt_diag_at(d, doc, s, "chat.mattermost.callback_url",
                       "'%s' needs a path, e.g. http://baton.example.com:8080/hooks/mattermost",
                       cb);
        else if (strcmp(path, "/ws") == 0 || strcmp(path, "/healthz") == 0 ||
                 strcmp(path, "/metrics") == 0 || strlen(path) > 200)
            bt_diag_at(d, doc, s, "chat.mattermost.callback_url",
                       "the path '%s' is taken or too long; use e.g. /hooks/mattermost", path);
        free(path);
    }
    json_t *ch = bt_check_array(d, doc, s, "channels", false);
    size_t i;
    json_t *v;
    json_array_foreach(ch, i, v)
    {
        /* Mattermost's ids are 26 lowercase letters and digits; a channel's
         * name ("town-square") is a common mistake here. */
        const char *id = json_string_value(v);
        if (!is_id(id) || strlen(id) != 26 || strpbrk(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
            bt_diag_at(d, doc, ch, "chat.mattermost.channels",
                       "entry %zu is not a channel id (26 lowercase letters and digits; a "
                       "channel's name will not do)",
                       i + 1);
    }
    return bt_diag_count(d) == before;
}

static const struct bt_chat__surface_ops mattermost_ops;

static void mm_free(struct bt_chat__surface *sf);

/* Where the WebSocket goes, from the server URL. */
static bool ws_target(struct mattermost *mm, const char *url, char *err, size_t errlen)
{
    char *copy = bt_strdup(url);
    const char *prot = NULL, *host = NULL, *path = NULL;
    int port = 0;
    if (lws_parse_uri(copy, &prot, &host, &port, &path) != 0 || !*host) {
        bt_fmt(err, errlen, "chat.mattermost.url: cannot read '%s'", url);
        free(copy);
        return false;
    }
    mm->ws_tls = strcmp(prot, "https") == 0;
    mm->ws_port = port;
    mm->ws_host = bt_strdup(host);
    bool dflt = port == (mm->ws_tls ? 443 : 80);
    bool v6 = strchr(host, ':') != NULL;
    mm->ws_hosthdr = dflt ? bt_asprintf(v6 ? "[%s]" : "%s", host)
                          : bt_asprintf(v6 ? "[%s]:%d" : "%s:%d", host, port);
    size_t n = strlen(path);
    while (n > 0 && path[n - 1] == '/')
        n--;
    mm->ws_path = bt_asprintf("%s%.*s/api/v4/websocket", n ? "/" : "", (int)n, path);
    free(copy);
    return true;
}

struct bt_chat__surface *bt_chat__mattermost_new(bt_chat *c, const json_t *s, char *err,
                                                 size_t errlen)
{
    struct mattermost *mm = bt_calloc(1, sizeof *mm);
    mm->sf.ops = &mattermost_ops;
    mm->sf.chat = c;
    mm->sf.impl = mm;
    mm->channels = json_array();
    mm->backlog = json_array();
    mm->backoff_ms = BACKOFF_MIN_MS;
    const char *url = json_string_value(json_object_get(s, "url"));
    const char *cb = json_string_value(json_object_get(s, "callback_url"));
    if (!url || !cb) {
        bt_fmt(err, errlen, "chat.mattermost needs url and callback_url");
        mm_free(&mm->sf);
        return NULL;
    }
    size_t n = strlen(url);
    while (n > 0 && url[n - 1] == '/')
        n--;
    mm->api = bt_asprintf("%.*s/api/v4", (int)n, url);
    mm->callback_url = bt_strdup(cb);
    mm->callback_path = url_path(cb);
    if (!mm->callback_path || !ws_target(mm, url, err, errlen)) {
        if (!mm->callback_path)
            bt_fmt(err, errlen, "chat.mattermost.callback_url: no path in '%s'", cb);
        mm_free(&mm->sf);
        return NULL;
    }
    json_t *ch = json_object_get(s, "channels");
    if (json_is_array(ch)) {
        json_decref(mm->channels);
        mm->channels = json_deep_copy(ch);
    }
    mm->token = bt_chat__env_token(s, "token_env", "MATTERMOST_TOKEN", err, errlen);
    if (!mm->token) {
        mm_free(&mm->sf);
        return NULL;
    }
    /* The action key: HMAC(token, label), so the token itself never signs
     * anything a client sees, and every process with this bot's token
     * verifies the buttons of the others. */
    unsigned int klen = 0;
    if (!HMAC(EVP_sha256(), mm->token, (int)strlen(mm->token),
              (const unsigned char *)ACTION_KEY_LABEL, strlen(ACTION_KEY_LABEL), mm->action_key,
              &klen) ||
        klen != sizeof mm->action_key) {
        bt_fmt(err, errlen, "mattermost: cannot derive the action key (HMAC failed)");
        mm_free(&mm->sf);
        return NULL;
    }
    return &mm->sf;
}

const char *bt_chat__mattermost_path(const struct bt_chat__surface *sf)
{
    const struct mattermost *mm = sf->impl;
    return mm->callback_path;
}

/* HMAC(action key, label 0 approval 0 token) as 64 hex digits. */
static bool action_secret(const struct mattermost *mm, const char *aid, const char *token,
                          char out[65])
{
    bt_buf m = BT_BUF_INIT(0);
    bt_buf_append(&m, ACTION_LABEL, sizeof ACTION_LABEL); /* with its NUL */
    bt_buf_append(&m, aid, strlen(aid) + 1);
    bt_buf_puts(&m, token);
    unsigned char mac[32];
    unsigned int n = 0;
    bool ok = HMAC(EVP_sha256(), mm->action_key, (int)sizeof mm->action_key,
                   (const unsigned char *)m.data, m.len, mac, &n) &&
              n == sizeof mac;
    bt_buf_free(&m);
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; ok && i < sizeof mac; i++) {
        out[2 * i] = hex[mac[i] >> 4];
        out[2 * i + 1] = hex[mac[i] & 15];
    }
    out[ok ? 64 : 0] = '\0';
    return ok;
}

/* ---- Web API (workers) ------------------------------------------------------------ */

/* One call to the REST API with the bot's token; *out (may be NULL) is the
 * reply when the status was the expected one. */
static enum bt_err api(const struct mattermost *mm, const char *method, const char *path,
                       const json_t *body, long want, json_t **out, char *err, size_t errlen)
{
    char *url = bt_asprintf("%s%s", mm->api, path);
    long status = 0;
    json_t *reply = NULL;
    enum bt_err e = bt_chat__http(method, url, mm->token, body, &status, &reply, NULL, err, errlen);
    free(url);
    if (out)
        *out = NULL;
    if (e != BT_OK)
        return e;
    if (status != want) {
        const char *why = json_string_value(json_object_get(reply, "message"));
        bt_fmt(err, errlen, "mattermost %s %s: %s (HTTP %ld)", method, path,
               why ? why : "no answer", status);
        json_decref(reply);
        return status == 429 || status >= 500 ? BT_EUNAVAIL : BT_ECONNECTOR;
    }
    if (out)
        *out = reply;
    else
        json_decref(reply);
    return BT_OK;
}

/* ---- rendering (Markdown and message attachments) ----------------------------------- */

/* Text from people or systems shown outside code: an @ gets a zero-width
 * space after it, so "@channel" in a request or a result never notifies a
 * whole channel when baton repeats it. */
static void put_plain(bt_buf *b, const char *s)
{
    for (; s && *s; s++) {
        bt_buf_append(b, s, 1);
        if (*s == '@')
            bt_buf_puts(b, "\xe2\x80\x8b");
    }
}

/* A fenced code block of s (clipped to max) that s cannot close early. */
static void put_code(bt_buf *b, const char *s, size_t max)
{
    char *c = bt_chat__clip(s, max);
    bt_buf_puts(b, "```\n");
    for (const char *p = c; *p; p++) {
        if (strncmp(p, "```", 3) == 0) {
            bt_buf_puts(b, "`\xe2\x80\x8b`\xe2\x80\x8b`");
            p += 2;
            continue;
        }
        bt_buf_append(b, p, 1);
    }
    bt_buf_puts(b, "\n```");
    free(c);
}

/* One Markdown table cell: one line, pipes escaped, clipped. */
static void put_cell(bt_buf *b, const json_t *cell)
{
    char *v = json_is_string(cell)          ? bt_strdup(json_string_value(cell))
              : cell && !json_is_null(cell) ? json_dumps(cell, JSON_ENCODE_ANY)
                                            : bt_strdup("-");
    char *c = bt_chat__clip(v ? v : "-", CELL_MAX);
    for (const char *p = c; *p; p++) {
        if (*p == '|')
            bt_buf_puts(b, "\\|");
        else if (*p == '\n' || *p == '\r' || *p == '\t')
            bt_buf_puts(b, " ");
        else if (*p == '@')
            bt_buf_puts(b, "@\xe2\x80\x8b");
        else
            bt_buf_append(b, p, 1);
    }
    free(c);
    free(v);
}

/* An answer as a message: its text, and a table (data.columns/rows) as a
 * Markdown table of at most ROWS_MAX rows. */
static char *answer_text(const json_t *r)
{
    bt_buf b = BT_BUF_INIT(0);
    const json_t *data = json_object_get(r, "data");
    const json_t *cols = json_object_get(data, "columns"), *rows = json_object_get(data, "rows");
    const char *text = json_string_value(json_object_get(r, "text"));
    if (!text)
        text = "(no answer)";
    if (json_is_array(cols) && json_is_array(rows) && json_array_size(cols) > 0) {
        /* The text's first line is the summary ("10 assets:"). */
        char *first = bt_strndup(text, strcspn(text, "\n"));
        put_plain(&b, first);
        free(first);
        size_t ncols = json_array_size(cols) < COLS_MAX ? json_array_size(cols) : COLS_MAX;
        bt_buf_puts(&b, "\n\n|");
        for (size_t k = 0; k < ncols; k++) {
            bt_buf_puts(&b, " ");
            put_cell(&b, json_array_get(cols, k));
            bt_buf_puts(&b, " |");
        }
        bt_buf_puts(&b, "\n|");
        for (size_t k = 0; k < ncols; k++)
            bt_buf_puts(&b, " --- |");
        size_t i;
        json_t *row;
        json_array_foreach(rows, i, row)
        {
            if (i >= ROWS_MAX)
                break;
            bt_buf_puts(&b, "\n|");
            for (size_t k = 0; k < ncols; k++) {
                bt_buf_puts(&b, " ");
                put_cell(&b, json_array_get(row, k));
                bt_buf_puts(&b, " |");
            }
        }
        if (json_array_size(rows) > ROWS_MAX)
            bt_buf_printf(&b, "\n\n…and %zu more. The console shows them all.",
                          json_array_size(rows) - ROWS_MAX);
    } else if (strchr(text, '\n')) {
        put_code(&b, text, MESSAGE_MAX - 16);
    } else {
        put_plain(&b, text);
    }
    char *s = bt_buf_steal(&b);
    char *clipped = bt_chat__clip(s, MESSAGE_MAX);
    free(s);
    return clipped;
}

/* "a, b, c" of a string array, defused (new string). */
static char *joined(const json_t *list, const char *none)
{
    char *raw = bt_chat__joined(list, none);
    bt_buf b = BT_BUF_INIT(0);
    put_plain(&b, raw);
    free(raw);
    return bt_buf_steal(&b);
}

static const char *str_or(const json_t *o, const char *key, const char *dflt)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : dflt;
}

static const char *risk_color(const char *risk)
{
    if (risk && strcmp(risk, "low") == 0)
        return "#2eb67d";
    if (risk && strcmp(risk, "medium") == 0)
        return "#ecb22e";
    if (risk && strcmp(risk, "high") == 0)
        return "#e8702a";
    if (risk && strcmp(risk, "critical") == 0)
        return "#d0021b";
    return "#8d8d8d";
}

/* A button whose click comes back to callback_url with the token (stolen)
 * and the action_secret that vouches for it; NULL without a token. */
static json_t *button(const struct mattermost *mm, const char *id, const char *name,
                      const char *style, const char *aid, const char *decision, char *token)
{
    char secret[65];
    if (!token || !action_secret(mm, aid, token, secret)) {
        free(token);
        return NULL;
    }
    json_t *b = json_pack("{s:s, s:s, s:s, s:s, s:{s:s, s:{s:s, s:s, s:s, s:s}}}", "id", id, "name",
                          name, "type", "button", "style", style, "integration", "url",
                          mm->callback_url, "context", "token", token, "approval", aid, "decision",
                          decision, "action_secret", secret);
    free(token);
    return b;
}

/* The plan card as one message attachment: what, who, risk, steps,
 * progress, result, and the buttons that are live in the card's state. */
static json_t *card_attachment(const struct mattermost *mm, bt_pipeline *p, const json_t *card)
{
    const char *aid = str_or(card, "approval_id", "?");
    const char *state = json_string_value(json_object_get(card, "state"));
    char *title = bt_asprintf("%s · level %lld (%s)", bt_chat__card_title(card),
                              (long long)json_integer_value(json_object_get(card, "level")),
                              str_or(card, "level_name", "?"));
    char *fallback =
        bt_asprintf("%s: %s", bt_chat__card_title(card), str_or(card, "summary", "a plan"));
    bt_buf b = BT_BUF_INIT(0);

    char *targets = joined(json_object_get(card, "targets"), "none");
    bt_buf_puts(&b, "**");
    put_plain(&b, str_or(card, "summary", "a plan"));
    bt_buf_puts(&b, "**\n");
    put_plain(&b, str_or(card, "request", ""));
    bt_buf_puts(&b, "\nRequested by **");
    put_plain(&b, str_or(card, "requester", "?"));
    bt_buf_printf(&b, "** · risk **%s** · targets: %s", str_or(card, "risk", "?"), targets);
    free(targets);

    size_t i;
    json_t *st;
    json_array_foreach(json_object_get(card, "steps"), i, st)
    {
        bt_buf_printf(&b, "%s%lld. `%s` on ", i ? "\n" : "\n\n",
                      (long long)json_integer_value(json_object_get(st, "number")),
                      str_or(st, "tool", "?"));
        put_plain(&b, str_or(st, "target", "?"));
        bt_buf_printf(&b, " · %s", bt_chat__step_state(card, st));
        const char *error = json_string_value(json_object_get(st, "error"));
        if (error) {
            bt_buf_puts(&b, " · ");
            put_plain(&b, error);
        }
    }

    const json_t *x = json_object_get(card, "execution");
    if (json_is_object(x)) {
        char *prog = bt_chat__progress(x);
        bt_buf_printf(&b, "\n\n%s", prog);
        free(prog);
    }
    const char *result = json_string_value(json_object_get(card, "result_text"));
    if (result) {
        bt_buf_puts(&b, "\n\n");
        put_code(&b, result, RESULT_MAX);
    }

    char *approved = joined(json_object_get(card, "approved_by"), "nobody yet");
    char *may = joined(json_object_get(card, "may_decide"), "nobody");
    char expires[32];
    bt_chat__expires(card, expires);
    bool open = bt_chat__card_open(card);
    if (open)
        bt_buf_printf(&b,
                      "\n\nApprovals: %lld needed · approved by: %s · may decide: %s · "
                      "expires %s · id %s",
                      (long long)json_integer_value(json_object_get(card, "approvals_required")),
                      approved, may, expires, aid);
    else
        bt_buf_printf(&b, "\n\nApproved by: %s · id %s", approved, aid);
    free(may);
    free(approved);

    char *text = bt_buf_steal(&b);
    char *ctext = bt_chat__clip(text, CARD_TEXT_MAX);
    char *ctitle = bt_chat__clip(title, 250);
    json_t *att = json_pack("{s:s, s:s, s:s, s:s}", "fallback", fallback, "color",
                            risk_color(json_string_value(json_object_get(card, "risk"))), "title",
                            ctitle, "text", ctext);
    free(ctitle);
    free(ctext);
    free(text);
    free(fallback);
    free(title);

    /* Action ids must be letters and digits: Mattermost puts them in a URL. */
    json_t *yes = NULL, *no = NULL;
    if (state && strcmp(state, "pending") == 0) {
        yes = button(mm, "approve", "Approve", "primary", aid, "approve",
                     bt_pipeline_decision_token(p, aid, -1, "approve"));
        no = button(mm, "deny", "Deny", "danger", aid, "deny",
                    bt_pipeline_decision_token(p, aid, -1, "deny"));
    } else if (state && strcmp(state, "releasing") == 0 &&
               json_is_integer(json_object_get(card, "next_step"))) {
        int n = (int)json_integer_value(json_object_get(card, "next_step"));
        char label[48], id[32], did[32];
        bt_fmt(label, sizeof label, "Release step %d", n);
        bt_fmt(id, sizeof id, "release%d", n);
        bt_fmt(did, sizeof did, "denyrest%d", n);
        yes = button(mm, id, label, "primary", aid, "approve",
                     bt_pipeline_decision_token(p, aid, n - 1, "approve"));
        no = button(mm, did, "Deny the rest", "danger", aid, "deny",
                    bt_pipeline_decision_token(p, aid, n - 1, "deny"));
    }
    /* A button whose token could not be made would be broken: show none. */
    if (yes && no)
        json_object_set_new(att, "actions", json_pack("[o, o]", yes, no));
    else {
        json_decref(yes);
        json_decref(no);
    }
    return att;
}

/* props with the card: {attachments: [card]} (new). */
static json_t *card_props(const struct mattermost *mm, bt_pipeline *p, const json_t *card)
{
    return json_pack("{s:[o]}", "attachments", card_attachment(mm, p, card));
}

/* ---- events (workers) ------------------------------------------------------------------ */

/* POST /posts: message (clipped) in channel, in thread root (or NULL),
 * with props (stolen, may be NULL); *id (may be NULL) the new post's id. */
static enum bt_err post(const struct mattermost *mm, const char *channel, const char *root,
                        const char *message, json_t *props, char **id, char *err, size_t errlen)
{
    char *m = bt_chat__clip(message, MESSAGE_MAX);
    json_t *body = json_pack("{s:s, s:s}", "channel_id", channel, "message", m);
    free(m);
    if (root && *root)
        json_object_set_new(body, "root_id", json_string(root));
    if (props)
        json_object_set_new(body, "props", props);
    json_t *reply = NULL;
    enum bt_err e = api(mm, "POST", "/posts", body, 201, &reply, err, errlen);
    json_decref(body);
    if (id)
        *id = NULL;
    if (e == BT_OK && id) {
        const char *v = json_string_value(json_object_get(reply, "id"));
        *id = is_id(v) ? bt_strdup(v) : NULL;
    }
    json_decref(reply);
    return e;
}

/* A message only user sees, in the thread. */
static void ephemeral(const struct mattermost *mm, const char *user, const char *channel,
                      const char *root, const char *text)
{
    char err[BT_ERRLEN];
    char *m = bt_chat__clip(text, MESSAGE_MAX);
    json_t *body = json_pack("{s:s, s:{s:s, s:s, s:s}}", "user_id", user, "post", "channel_id",
                             channel, "message", m, "root_id", root ? root : "");
    free(m);
    if (api(mm, "POST", "/posts/ephemeral", body, 201, NULL, err, sizeof err) != BT_OK)
        bt_log(BT_LOG_WARN, "mattermost", NULL, "ephemeral message to %s: %s", user, err);
    json_decref(body);
}

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

/* The length of the mention of name at s ("@name", any case, not the start
 * of a longer username), or 0. */
static size_t mention_at(const char *start, const char *s, const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || *s != '@' || strncasecmp(s + 1, name, n) != 0)
        return 0;
    if (s > start && (name_char(s[-1]) || s[-1] == '.'))
        return 0;
    const char *e = s + 1 + n;
    if (name_char(*e) || (*e == '.' && name_char(e[1])))
        return 0;
    return n + 1;
}

static bool mentions_name(const char *text, const char *name)
{
    for (const char *s = text; s && *s; s++)
        if (mention_at(text, s, name))
            return true;
    return false;
}

/* The request without mentions of the bot, trimmed (new string). */
static char *strip_mention(const char *text, const char *name)
{
    bt_buf b = BT_BUF_INIT(0);
    for (const char *s = text; *s;) {
        size_t m = mention_at(text, s, name);
        if (m) {
            s += m;
            continue;
        }
        bt_buf_append(&b, s, 1);
        s++;
    }
    char *out = bt_buf_steal(&b);
    char *start = out;
    while (*start == ' ' || *start == '\t' || *start == '\n' || *start == '\r' || *start == ':' ||
           *start == ',')
        start++;
    size_t n = strlen(start);
    while (n > 0 && (start[n - 1] == ' ' || start[n - 1] == '\t' || start[n - 1] == '\n' ||
                     start[n - 1] == '\r'))
        n--;
    char *trimmed = bt_strndup(start, n);
    free(out);
    return trimmed;
}

static bool claim(bt_pipeline *p, const char *key)
{
    return bt_chat__claim(p, "mattermost", key);
}

#define UNKNOWN_USER_TEXT                                                                          \
    "I don't know who you are in baton yet, so I can't act for you. Ask a baton admin to add "     \
    "`identities: {mattermost: %s}` to your user in baton.yaml."

/* Worker: a post the loop kept ({post, bot_id, bot_name}). */
static void on_post(struct mattermost *mm, bt_pipeline *p, const json_t *in, json_t *cards)
{
    const json_t *ps = json_object_get(in, "post");
    const char *id = json_string_value(json_object_get(ps, "id"));
    const char *user = json_string_value(json_object_get(ps, "user_id"));
    const char *channel = json_string_value(json_object_get(ps, "channel_id"));
    const char *text = json_string_value(json_object_get(ps, "message"));
    const char *root = json_string_value(json_object_get(ps, "root_id"));
    const char *bot_name = json_string_value(json_object_get(in, "bot_name"));
    if (!is_id(id) || !is_id(user) || !is_id(channel) || !text)
        return;
    char key[128];
    bt_fmt(key, sizeof key, "mattermost:post:%s", id);
    if (!claim(p, key))
        return;
    const char *thread = root && *root ? root : id;
    const char *who = bt_pipeline_user_for(p, "mattermost", user);
    if (!who) {
        char *m = bt_asprintf(UNKNOWN_USER_TEXT, user);
        ephemeral(mm, user, channel, thread, m);
        free(m);
        return;
    }
    char *request = strip_mention(text, bot_name);
    if (strlen(request) > REQUEST_MAX || !bt_utf8_valid(request, strlen(request)) || !*request) {
        ephemeral(mm, user, channel, thread,
                  *request
                      ? "That request is too long for me (4,000 bytes at most)."
                      : "Ask me something, e.g. \"how many linux servers are in production?\"");
        free(request);
        return;
    }
    char label[96];
    bt_fmt(label, sizeof label, "mattermost:%s", channel);
    json_t *r = bt_pipeline_handle(p, request, who, label);
    free(request);
    if (!r) {
        ephemeral(mm, user, channel, thread, "Sorry, that request failed inside baton.");
        return;
    }
    char err[BT_ERRLEN];
    const char *aid = json_string_value(json_object_get(r, "approval_id"));
    json_t *card = aid ? bt_pipeline_card(p, aid) : NULL;
    enum bt_err e;
    if (card) {
        char *post_id = NULL;
        e = post(mm, channel, thread, "", card_props(mm, p, card), &post_id, err, sizeof err);
        if (e == BT_OK && post_id &&
            bt_store_chat_post_add(bt_pipeline_store(p), aid, "mattermost", channel, post_id,
                                   thread, err, sizeof err) != BT_OK)
            bt_log(BT_LOG_ERROR, "mattermost", NULL, "recording the card of %s: %s", aid, err);
        free(post_id);
        json_array_append_new(cards, card);
    } else {
        char *m = answer_text(r);
        e = post(mm, channel, thread, m, NULL, NULL, err, sizeof err);
        free(m);
    }
    if (e != BT_OK)
        bt_log(BT_LOG_ERROR, "mattermost", json_string_value(json_object_get(r, "request_id")),
               "answering in %s: %s", channel, err);
    json_decref(r);
}

/* Whether post in channel is one of the posts baton made for aid: 200
 * when it is, 403 when not, 503 when the store cannot say. */
static unsigned int post_of_approval(bt_pipeline *p, const char *aid, const char *post_id,
                                     const char *channel)
{
    char err[BT_ERRLEN];
    json_t *posts = NULL;
    if (bt_store_chat_posts_of(bt_pipeline_store(p), aid, &posts, err, sizeof err) != BT_OK) {
        bt_log(BT_LOG_ERROR, "mattermost", NULL, "posts of %s: %s", aid, err);
        return 503;
    }
    unsigned int status = 403;
    size_t i;
    json_t *v;
    json_array_foreach(posts, i, v)
    {
        if (strcmp(str_or(v, "surface", ""), "mattermost") == 0 &&
            strcmp(str_or(v, "post", ""), post_id) == 0 &&
            strcmp(str_or(v, "channel", ""), channel) == 0)
            status = 200;
    }
    json_decref(posts);
    return status;
}

static void http_reply(bt_chat_task *t, unsigned int status, json_t *reply)
{
    t->http_status = status;
    free(t->http_reply);
    t->http_reply = json_dumps(reply, JSON_COMPACT);
    json_decref(reply);
}

/* Worker: a button click (the checked callback body). Decides with the
 * button's token and answers with the fresh card for the clicked post. */
static void on_click(struct mattermost *mm, bt_chat_task *t, bt_pipeline *p, json_t *cards)
{
    const json_t *in = t->in;
    const char *user = str_or(in, "user_id", "");
    const char *channel = str_or(in, "channel_id", "");
    const char *post_id = str_or(in, "post_id", "");
    const char *trigger = json_string_value(json_object_get(in, "trigger_id"));
    const char *aid = str_or(in, "approval", "");
    const char *token = str_or(in, "token", "");
    const char *decision = str_or(in, "decision", "decide");
    unsigned int status = post_of_approval(p, aid, post_id, channel);
    if (status != 200) {
        if (status == 403)
            bt_log(BT_LOG_WARN, "mattermost", NULL,
                   "a click names post %s, which baton did not post for %s; refused", post_id, aid);
        http_reply(t, status,
                   json_pack("{s:s}", "error",
                             status == 403 ? "not a post of this approval" : "store unavailable"));
        return;
    }
    /* The key: a trigger id is unique per click; without one, the same
     * person pressing the same button on the same post is one click. */
    char *what =
        trigger && *trigger ? bt_strdup(trigger) : bt_asprintf("%s\n%s\n%s", post_id, user, token);
    char hash[65], key[128];
    bt_sha256_hex(what, strlen(what), hash);
    free(what);
    bt_fmt(key, sizeof key, "mattermost:click:%s", hash);
    json_t *reply = json_object();
    const char *who = bt_pipeline_user_for(p, "mattermost", user);
    json_t *r = NULL;
    if (!claim(p, key)) {
        /* Handled already (here or by another process): show the card. */
    } else if (!who) {
        char *m = bt_asprintf(UNKNOWN_USER_TEXT, user);
        json_object_set_new(reply, "ephemeral_text", json_string(m));
        free(m);
        http_reply(t, 200, reply);
        return;
    } else {
        r = bt_pipeline_decide(p, aid, who, NULL, -1, "mattermost", token);
        const char *st = json_string_value(json_object_get(r, "status"));
        const char *text = json_string_value(json_object_get(r, "text"));
        if (!r || !st || strcmp(st, "refused") == 0) {
            /* Nothing changed: the post stays as it is. */
            char *m = bt_asprintf("You may not %s this: %s", decision,
                                  text ? text : "the decision was refused.");
            json_object_set_new(reply, "ephemeral_text", json_string(m));
            free(m);
            http_reply(t, 200, reply);
            json_decref(r);
            return;
        }
        if (strcmp(st, "already") == 0)
            json_object_set_new(reply, "ephemeral_text",
                                json_string(text ? text : "That was decided already."));
    }
    json_decref(r);
    json_t *card = bt_pipeline_card(p, aid);
    if (card) {
        json_object_set_new(
            reply, "update",
            json_pack("{s:s, s:o}", "message", "", "props", card_props(mm, p, card)));
        json_array_append_new(cards, card);
    }
    http_reply(t, 200, reply);
}

/* Worker: who the bot is. */
static void run_me(struct mattermost *mm, bt_chat_task *t)
{
    char err[BT_ERRLEN];
    json_t *me = NULL;
    t->out = json_object();
    if (api(mm, "GET", "/users/me", NULL, 200, &me, err, sizeof err) != BT_OK) {
        json_object_set_new(t->out, "error", json_string(err));
        return;
    }
    const char *id = json_string_value(json_object_get(me, "id"));
    const char *name = json_string_value(json_object_get(me, "username"));
    if (!is_id(id) || !name || !*name || strlen(name) > ID_MAX)
        json_object_set_new(t->out, "error", json_string("users/me gave no id or username"));
    else
        json_object_set_new(t->out, "me", json_pack("{s:s, s:s}", "id", id, "username", name));
    json_decref(me);
}

static void mm_run(struct bt_chat__surface *sf, bt_chat_task *t, bt_pipeline *p, json_t *cards)
{
    struct mattermost *mm = sf->impl;
    if (t->op == OP_ME)
        run_me(mm, t);
    else if (t->op == OP_POST)
        on_post(mm, p, t->in, cards);
    else if (t->op == OP_CLICK)
        on_click(mm, t, p, cards);
}

static enum bt_err mm_update_post(struct bt_chat__surface *sf, bt_pipeline *p, const json_t *where,
                                  const json_t *card, char *err, size_t errlen)
{
    struct mattermost *mm = sf->impl;
    const char *id = json_string_value(json_object_get(where, "post"));
    if (!is_id(id)) {
        bt_fmt(err, errlen, "not a Mattermost post id");
        return BT_EINVAL;
    }
    /* A patch changes only what it sends; a full PUT would blank the rest. */
    char path[128];
    bt_fmt(path, sizeof path, "/posts/%s/patch", id);
    json_t *body = json_pack("{s:s, s:o}", "message", "", "props", card_props(mm, p, card));
    enum bt_err e = api(mm, "PUT", path, body, 200, NULL, err, errlen);
    json_decref(body);
    return e;
}

/* ---- the button callback (loop thread) ------------------------------------------------- */

static const char *field(const json_t *o, const char *key, size_t max)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v && *v && strlen(v) <= max ? v : NULL;
}

static bt_chat_task *refuse(unsigned int code, unsigned int *status, char **reply, const char *why)
{
    *status = code;
    json_t *o = json_pack("{s:s}", "error", why);
    *reply = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return NULL;
}

bt_chat_task *bt_chat__mattermost_http(struct bt_chat__surface *sf, const char *body, size_t len,
                                       unsigned int *status, char **reply)
{
    struct mattermost *mm = sf->impl;
    *reply = NULL;
    if (len > CALLBACK_BODY_MAX)
        return refuse(413, status, reply, "body too large");
    if (!bt_utf8_valid(body, len))
        return refuse(400, status, reply, "body is not UTF-8");
    json_error_t jerr;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(o)) {
        json_decref(o);
        return refuse(400, status, reply, "body is not a JSON object");
    }
    const json_t *ctx = json_object_get(o, "context");
    const char *user = field(o, "user_id", ID_MAX);
    const char *channel = field(o, "channel_id", ID_MAX);
    const char *post_id = field(o, "post_id", ID_MAX);
    const char *trigger = field(o, "trigger_id", TRIGGER_MAX);
    const char *token = field(ctx, "token", TOKEN_MAX);
    const char *aid = field(ctx, "approval", 256);
    const char *secret = field(ctx, "action_secret", 64);
    const char *decision = field(ctx, "decision", 16);
    const json_t *tr = json_object_get(o, "trigger_id");
    if (!is_id(user) || !is_id(channel) || !is_id(post_id) || !json_is_object(ctx) || !token ||
        !aid || !secret || (tr && !json_is_string(tr)) ||
        (tr && !trigger && *json_string_value(tr)) ||
        (decision && strcmp(decision, "approve") != 0 && strcmp(decision, "deny") != 0)) {
        json_decref(o);
        return refuse(400, status, reply, "not a baton button");
    }
    char want[65];
    if (strlen(secret) != 64 || !action_secret(mm, aid, token, want) ||
        CRYPTO_memcmp(want, secret, 64) != 0) {
        bt_log(BT_LOG_WARN, "mattermost", NULL,
               "a button callback for %s from user %s did not verify; refused", aid, user);
        json_decref(o);
        return refuse(403, status, reply, "this button was not made by this baton");
    }
    json_t *in = json_pack("{s:s, s:s, s:s, s:s?, s:s, s:s, s:s?}", "user_id", user, "channel_id",
                           channel, "post_id", post_id, "trigger_id", trigger, "approval", aid,
                           "token", token, "decision", decision);
    json_decref(o);
    bt_chat_task *t = bt_chat__task(sf, OP_CLICK, in);
    t->kind = BT_CHAT__T_HTTP;
    *status = 200;
    return t;
}

/* ---- the connection (loop thread) ------------------------------------------------------ */

static void conn_write(struct mconn *k, json_t *msg)
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

static int64_t backoff_next(struct mattermost *mm)
{
    int64_t base = mm->backoff_ms;
    int64_t wait = base / 2 + (int64_t)(rand() % (int)(base / 2 + 1)); /* jitter */
    mm->backoff_ms = base * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : base * 2;
    return wait;
}

static void conn_free(struct mconn *k)
{
    bt_buf_free(&k->rx);
    json_decref(k->outq);
    free(k->path);
    free(k);
}

static void conn_close(struct mconn *k)
{
    if (k->closed)
        return;
    k->closed = true;
    if (k->wsi)
        lws_set_timeout(k->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

static void connect_ws(struct mattermost *mm)
{
    struct mconn *k = bt_calloc(1, sizeof *k);
    k->hdr.sf = &mm->sf;
    k->mm = mm;
    k->rx.max = RX_MAX;
    k->outq = json_array();
    k->opened_ms = bt_mono_ms();
    k->action_seq = 1;
    /* Resume the server's session where baton left it, as the webapp
     * does: the server replays the events from sequence_number on. */
    k->resumed = mm->connection_id && mm->have_seq;
    k->path = k->resumed ? bt_asprintf("%s?connection_id=%s&sequence_number=%lld", mm->ws_path,
                                       mm->connection_id, mm->next_seq)
                         : bt_strdup(mm->ws_path);
    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof ci);
    ci.context = bt_chat__ctx(mm->sf.chat);
    ci.address = mm->ws_host;
    ci.port = mm->ws_port;
    ci.path = k->path;
    ci.host = mm->ws_hosthdr;
    ci.origin = mm->ws_hosthdr;
    ci.ssl_connection = mm->ws_tls ? LCCSCF_USE_SSL : 0;
    ci.local_protocol_name = "baton-chat";
    ci.userdata = k;
    ci.pwsi = &k->wsi;
    ci.retry_and_idle_policy = bt_chat__retry();
    mm->conn = k;
    if (k->resumed)
        bt_log(BT_LOG_INFO, "mattermost", NULL, "reconnecting (resuming at event %lld)",
               mm->next_seq);
    if (!lws_client_connect_via_info(&ci)) {
        /* CLIENT_CONNECTION_ERROR may have run and freed it already. */
        if (mm->conn == k) {
            mm->conn = NULL;
            conn_free(k);
            mm->next_open_ms = bt_mono_ms() + backoff_next(mm);
        }
        bt_log(BT_LOG_WARN, "mattermost", NULL, "could not start a WebSocket connection");
    }
}

/* Hand an event to the workers, or keep it for the next tick (in
 * borrowed). False when the workers are busy. */
static bool submit_post(struct mattermost *mm, json_t *in)
{
    return bt_chat__submit(mm->sf.chat, bt_chat__task(&mm->sf, OP_POST, json_incref(in)));
}

static void backlog_drain(struct mattermost *mm)
{
    while (json_array_size(mm->backlog) > 0 && submit_post(mm, json_array_get(mm->backlog, 0)))
        json_array_remove(mm->backlog, 0);
}

static void queue_post(struct mattermost *mm, json_t *in)
{
    backlog_drain(mm);
    if (json_array_size(mm->backlog) == 0 && submit_post(mm, in)) {
        json_decref(in);
        return;
    }
    if (json_array_size(mm->backlog) >= BACKLOG_MAX) {
        mm->dropped++;
        bt_log(BT_LOG_ERROR, "mattermost", NULL, "busy: %d events wait already; a post was dropped",
               BACKLOG_MAX);
        json_decref(in);
        return;
    }
    json_array_append_new(mm->backlog, in);
}

static bool channel_listed(const struct mattermost *mm, const char *channel)
{
    size_t i;
    json_t *v;
    json_array_foreach(mm->channels, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), channel) == 0)
            return true;
    }
    return false;
}

/* data.mentions: a JSON string holding an array of user ids. */
static bool mentions_id(const char *mentions, const char *id)
{
    if (!mentions || !id)
        return false;
    json_error_t jerr;
    json_t *list = json_loads(mentions, 0, &jerr);
    bool found = false;
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), id) == 0)
            found = true;
    }
    json_decref(list);
    return found;
}

static bool prop_true(const json_t *props, const char *key)
{
    const json_t *v = json_object_get(props, key);
    return json_is_true(v) || (json_is_string(v) && strcmp(json_string_value(v), "true") == 0);
}

/* A `posted` event: keep the posts baton answers. */
static void on_posted(struct mattermost *mm, const json_t *data)
{
    const char *raw = json_string_value(json_object_get(data, "post"));
    if (!raw)
        return;
    json_error_t jerr;
    json_t *ps = json_loads(raw, 0, &jerr); /* data.post is JSON in a string */
    const char *id = json_string_value(json_object_get(ps, "id"));
    const char *user = json_string_value(json_object_get(ps, "user_id"));
    const char *channel = json_string_value(json_object_get(ps, "channel_id"));
    const char *message = json_string_value(json_object_get(ps, "message"));
    const char *type = json_string_value(json_object_get(ps, "type"));
    const json_t *props = json_object_get(ps, "props");
    if (!is_id(id) || !is_id(user) || !is_id(channel) || !message ||
        strcmp(user, mm->bot_id) == 0 || (type && *type) || prop_true(props, "from_bot") ||
        prop_true(props, "from_webhook")) {
        /* Not a person's post (ours, another bot's, a system message). */
        json_decref(ps);
        return;
    }
    const char *ct = json_string_value(json_object_get(data, "channel_type"));
    bool dm = ct && strcmp(ct, "D") == 0;
    if (!dm && !channel_listed(mm, channel) &&
        !mentions_id(json_string_value(json_object_get(data, "mentions")), mm->bot_id) &&
        !mentions_name(message, mm->bot_name)) {
        json_decref(ps);
        return;
    }
    queue_post(mm, json_pack("{s:o, s:s, s:s}", "post", ps, "bot_id", mm->bot_id, "bot_name",
                             mm->bot_name));
}

/* One whole frame from Mattermost. */
static void on_frame(struct mattermost *mm, struct mconn *k, const char *data, size_t len)
{
    json_error_t jerr;
    json_t *msg = json_loadb(data, len, 0, &jerr);
    const char *event = json_string_value(json_object_get(msg, "event"));
    const json_t *seq = json_object_get(msg, "seq");
    if (!event) {
        /* A reply to one of baton's actions (the authentication). */
        const char *st = json_string_value(json_object_get(msg, "status"));
        if (st && strcmp(st, "OK") != 0) {
            const json_t *e = json_object_get(msg, "error");
            const char *why = json_string_value(json_object_get(e, "message"));
            bt_log(BT_LOG_ERROR, "mattermost", NULL,
                   "the server refused the WebSocket authentication: %s",
                   why                    ? why
                   : json_string_value(e) ? json_string_value(e)
                                          : "no reason");
            conn_close(k);
        } else if (!msg) {
            bt_log(BT_LOG_WARN, "mattermost", NULL, "a frame baton does not understand (%zu bytes)",
                   len);
        }
        json_decref(msg);
        return;
    }
    if (strcmp(event, "hello") == 0) {
        const char *cid =
            json_string_value(json_object_get(json_object_get(msg, "data"), "connection_id"));
        if (mm->connection_id && (!cid || strcmp(cid, mm->connection_id) != 0))
            bt_log(BT_LOG_WARN, "mattermost", NULL,
                   "the server started a new session; events sent while baton was away "
                   "(after event %lld) are not replayed",
                   mm->next_seq - 1);
        free(mm->connection_id);
        mm->connection_id = is_id(cid) ? bt_strdup(cid) : NULL;
        mm->next_seq = json_is_integer(seq) ? json_integer_value(seq) + 1 : 1;
        mm->have_seq = true;
        k->hello = true;
        mm->backoff_ms = BACKOFF_MIN_MS;
        bt_log(BT_LOG_INFO, "mattermost", NULL, "connected as @%s", mm->bot_name);
        json_decref(msg);
        return;
    }
    if (json_is_integer(seq)) {
        long long s = json_integer_value(seq);
        if (mm->have_seq && s < mm->next_seq) {
            json_decref(msg); /* replayed twice: seen already */
            return;
        }
        if (mm->have_seq && s > mm->next_seq) {
            /* Events were lost on the way: resume from the first missing
             * one, as the webapp does; the server replays them. */
            bt_log(BT_LOG_WARN, "mattermost", NULL,
                   "missed events %lld to %lld; reconnecting to have them replayed", mm->next_seq,
                   s - 1);
            conn_close(k);
            json_decref(msg);
            return;
        }
        mm->next_seq = s + 1;
        mm->have_seq = true;
        mm->backoff_ms = BACKOFF_MIN_MS;
    }
    mm->events++;
    if (strcmp(event, "posted") == 0 && mm->bot_id)
        on_posted(mm, json_object_get(msg, "data"));
    json_decref(msg);
}

static void mm_done(struct bt_chat__surface *sf, bt_chat_task *t)
{
    struct mattermost *mm = sf->impl;
    if (t->op != OP_ME)
        return;
    mm->fetching = false;
    const json_t *me = json_object_get(t->out, "me");
    if (me && !mm->bot_id) {
        mm->bot_id = bt_strdup(json_string_value(json_object_get(me, "id")));
        mm->bot_name = bt_strdup(json_string_value(json_object_get(me, "username")));
    }
    if (mm->stopped)
        return;
    if (!mm->bot_id) {
        const char *why = json_string_value(json_object_get(t->out, "error"));
        int64_t wait = backoff_next(mm);
        bt_log(BT_LOG_WARN, "mattermost", NULL, "cannot learn who the bot is: %s; again in %lld ms",
               why ? why : "no answer", (long long)wait);
        mm->next_open_ms = bt_mono_ms() + wait;
        return;
    }
    connect_ws(mm);
}

static void mm_tick(struct bt_chat__surface *sf, int64_t now)
{
    struct mattermost *mm = sf->impl;
    if (mm->stopped)
        return;
    backlog_drain(mm);
    struct mconn *k = mm->conn;
    if (k && !k->closed && !k->hello && !k->resumed && now - k->opened_ms > HELLO_TIMEOUT_MS) {
        bt_log(BT_LOG_WARN, "mattermost", NULL, "no hello within %d ms; closing", HELLO_TIMEOUT_MS);
        conn_close(k);
    }
    if (mm->conn || mm->fetching || now < mm->next_open_ms)
        return;
    if (mm->bot_id) {
        connect_ws(mm);
        return;
    }
    if (bt_chat__submit(sf->chat, bt_chat__task(sf, OP_ME, json_object())))
        mm->fetching = true;
}

static void mm_start(struct bt_chat__surface *sf)
{
    struct mattermost *mm = sf->impl;
    mm->next_open_ms = 0;
    mm_tick(sf, bt_mono_ms());
}

static void mm_stop(struct bt_chat__surface *sf)
{
    struct mattermost *mm = sf->impl;
    mm->stopped = true;
    if (mm->conn)
        conn_close(mm->conn);
}

static int mm_callback(struct bt_chat__surface *sf, struct lws *wsi,
                       enum lws_callback_reasons reason, struct bt_chat__conn *conn, void *in,
                       size_t len)
{
    struct mattermost *mm = sf->impl;
    struct mconn *k = (struct mconn *)conn;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER: {
        unsigned char **p = in, *end = *p + len;
        char *auth = bt_asprintf("Bearer %s", mm->token);
        int rc = lws_add_http_header_by_name(
            wsi, (const unsigned char *)"authorization:", (const unsigned char *)auth,
            (int)strlen(auth), p, end);
        memset(auth, 0, strlen(auth));
        free(auth);
        return rc ? -1 : 0;
    }
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        k->wsi = wsi;
        k->established = true;
        /* Also authenticate in band: a proxy may have dropped the header.
         * The server ignores this when the header did its work. */
        conn_write(k, json_pack("{s:i, s:s, s:{s:s}}", "seq", k->action_seq++, "action",
                                "authentication_challenge", "data", "token", mm->token));
        if (k->resumed)
            bt_log(BT_LOG_INFO, "mattermost", NULL, "reconnected as @%s", mm->bot_name);
        return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        if (!k->rx_skip && bt_buf_append(&k->rx, in, len) != BT_OK) {
            bt_log(BT_LOG_WARN, "mattermost", NULL, "a frame over %u bytes; dropped", RX_MAX);
            bt_buf_free(&k->rx);
            k->rx.max = RX_MAX;
            k->rx_skip = true;
        }
        if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) != 0)
            return 0;
        if (k->rx_skip) {
            /* It was an event with a number of its own: count it as seen
             * rather than reconnect for it again and again. */
            if (mm->have_seq)
                mm->next_seq++;
            k->rx_skip = false;
            return 0;
        }
        on_frame(mm, k, k->rx.data ? k->rx.data : "", k->rx.len);
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
        memset(buf, 0, LWS_PRE + n); /* the first frame holds the token */
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
        bool was_up = k->established && (k->hello || k->resumed);
        if (reason == LWS_CALLBACK_CLIENT_CONNECTION_ERROR)
            bt_log(BT_LOG_WARN, "mattermost", NULL, "WebSocket connection failed: %s",
                   in ? (const char *)in : "no reason");
        else
            bt_log(BT_LOG_INFO, "mattermost", NULL, "WebSocket connection closed");
        if (mm->conn == k)
            mm->conn = NULL;
        conn_free(k);
        if (!mm->stopped) {
            if (was_up)
                mm->reconnects++;
            mm->next_open_ms = bt_mono_ms() + backoff_next(mm);
        }
        return 0;
    }
    default:
        return 0;
    }
}

static json_t *mm_status(const struct bt_chat__surface *sf)
{
    const struct mattermost *mm = sf->impl;
    const struct mconn *k = mm->conn;
    bool up = k && k->established && !k->closed && (k->hello || k->resumed);
    /* seq: the last event received (-1: none yet); dropped: posts lost
     * because the workers stayed busy past the backlog. */
    return json_pack(
        "{s:b, s:I, s:I, s:I, s:I, s:I}", "connected", up, "connections", (json_int_t)(up ? 1 : 0),
        "events", (json_int_t)mm->events, "reconnects", (json_int_t)mm->reconnects, "seq",
        (json_int_t)(mm->have_seq ? mm->next_seq - 1 : -1), "dropped", (json_int_t)mm->dropped);
}

static void mm_free(struct bt_chat__surface *sf)
{
    struct mattermost *mm = sf->impl;
    if (mm->conn)
        conn_free(mm->conn);
    if (mm->token) {
        memset(mm->token, 0, strlen(mm->token));
        free(mm->token);
    }
    free(mm->api);
    free(mm->callback_url);
    free(mm->callback_path);
    free(mm->ws_host);
    free(mm->ws_hosthdr);
    free(mm->ws_path);
    free(mm->bot_id);
    free(mm->bot_name);
    free(mm->connection_id);
    json_decref(mm->channels);
    json_decref(mm->backlog);
    free(mm);
}

static const struct bt_chat__surface_ops mattermost_ops = {
    .name = "mattermost",
    .start = mm_start,
    .tick = mm_tick,
    .stop = mm_stop,
    .callback = mm_callback,
    .done = mm_done,
    .status = mm_status,
    .free = mm_free,
    .run = mm_run,
    .update_post = mm_update_post,
};
