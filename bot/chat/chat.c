/*
 * chat.c - the parts of team chat every surface shares: the `chat:`
 * settings, the lws protocol of the client connections, tasks, card
 * updates with their throttle, and a small libcurl JSON client.
 *
 * Card updates. The server calls bt_chat_card for every card that changed
 * (decisions from any surface, execution progress). The loop keeps the
 * newest card per approval and sends at most one T_CARD task per approval
 * per update_interval_ms, and never two at once, so a busy execution costs a
 * platform one edit a second, and the last state always lands. The task
 * looks the approval's posts up in the store (chat_posts), so a card shown
 * by another process or before a restart is updated too.
 */
#include "bot/chat/chat_int.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "bot/log.h"
#include "bot/store/store.h"

#define SURFACES_MAX 2
#define CARDS_MAX 512            /* approvals with an update waiting */
#define UPDATE_INTERVAL_MS 1000  /* default per approval */
#define HTTP_BODY_MAX (4u << 20) /* reply cap */
#define HTTP_TRIES 3             /* 429s waited out */
#define RETRY_AFTER_MAX_S 30     /* longest 429 wait honoured */
#define HTTP_CONNECT_TIMEOUT_MS 5000L
#define HTTP_TIMEOUT_MS 15000L

struct pending {
    char *approval_id;
    json_t *card;    /* newest card not yet sent, or NULL */
    int64_t last_ms; /* when the last update task left */
    bool in_flight;  /* a task for it is running */
};

struct bt_chat {
    bt_chat_submit_fn submit;
    void *host;
    struct lws_context *ctx;
    struct bt_chat__surface *sf[SURFACES_MAX];
    size_t nsf;
    long long update_interval_ms;
    struct pending cards[CARDS_MAX];
    size_t ncards;
    bool curl_ready;
};

/* ---- configuration ------------------------------------------------------------ */

bool bt_chat_check_config(const bt_config *cfg, bt_diag *d)
{
    size_t before = bt_diag_count(d);
    const bt_yaml_doc *doc = bt_config_main(cfg);
    json_t *chat = bt_config_get(cfg, "chat");
    if (!chat)
        return true;
    if (!json_is_object(chat)) {
        bt_diag_at(d, doc, chat, "chat", "must be a mapping, not %s", bt_conf_type_name(chat));
        return false;
    }
    static const char *const keys[] = {"slack", "mattermost", "update_interval_ms", NULL};
    bt_check_keys(d, doc, chat, keys);
    long long v;
    bt_check_int(d, doc, chat, "update_interval_ms", false, 200, 60000, &v);
    json_t *slack = bt_check_object(d, doc, chat, "slack", false);
    if (slack)
        bt_chat__slack_check(cfg, slack, d);
    json_t *mm = bt_check_object(d, doc, chat, "mattermost", false);
    if (mm)
        bt_chat__mattermost_check(cfg, mm, d);
    return bt_diag_count(d) == before;
}

char *bt_chat__env_token(const json_t *settings, const char *key, const char *dflt, char *err,
                         size_t errlen)
{
    const char *name = json_string_value(json_object_get(settings, key));
    if (!name)
        name = dflt;
    const char *v = getenv(name);
    if (!v || !*v) {
        bt_fmt(err, errlen, "environment variable %s (chat %s) is not set", name, key);
        return NULL;
    }
    return bt_strdup(v);
}

enum bt_err bt_chat_new(const bt_config *cfg, bt_chat_submit_fn submit, void *host, bt_chat **out,
                        char *err, size_t errlen)
{
    *out = NULL;
    json_t *chat = bt_config_get(cfg, "chat");
    json_t *slack = json_object_get(chat, "slack"), *mm = json_object_get(chat, "mattermost");
    if (!json_is_object(slack) && !json_is_object(mm))
        return BT_OK;
    bt_chat *c = bt_calloc(1, sizeof *c);
    c->submit = submit;
    c->host = host;
    json_t *iv = json_object_get(chat, "update_interval_ms");
    c->update_interval_ms = json_is_integer(iv) ? json_integer_value(iv) : UPDATE_INTERVAL_MS;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        bt_fmt(err, errlen, "chat: libcurl did not initialise");
        free(c);
        return BT_EIO;
    }
    c->curl_ready = true;
    struct bt_chat__surface *sf = NULL;
    if (json_is_object(slack)) {
        if (!(sf = bt_chat__slack_new(c, slack, err, errlen))) {
            bt_chat_free(c);
            return BT_ECONFIG;
        }
        c->sf[c->nsf++] = sf;
    }
    if (json_is_object(mm)) {
        if (!(sf = bt_chat__mattermost_new(c, mm, err, errlen))) {
            bt_chat_free(c);
            return BT_ECONFIG;
        }
        c->sf[c->nsf++] = sf;
    }
    *out = c;
    return BT_OK;
}

void bt_chat_free(bt_chat *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nsf; i++)
        c->sf[i]->ops->free(c->sf[i]);
    for (size_t i = 0; i < c->ncards; i++) {
        free(c->cards[i].approval_id);
        json_decref(c->cards[i].card);
    }
    if (c->curl_ready)
        curl_global_cleanup();
    free(c);
}

/* ---- the loop side -------------------------------------------------------------- */

static int chat_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                         size_t len)
{
    struct bt_chat__conn *conn = user;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
    case LWS_CALLBACK_CLIENT_RECEIVE:
    case LWS_CALLBACK_CLIENT_WRITEABLE:
    case LWS_CALLBACK_CLIENT_CLOSED:
    case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
    case LWS_CALLBACK_CLIENT_FILTER_PRE_ESTABLISH:
        if (conn && conn->sf)
            return conn->sf->ops->callback(conn->sf, wsi, reason, conn, in, len);
        return 0;
    default:
        return 0;
    }
}

struct lws_protocols bt_chat_protocol(void)
{
    struct lws_protocols p = {"baton-chat", chat_callback, 0, 65536, 0, NULL, 0};
    return p;
}

const lws_retry_bo_t *bt_chat__retry(void)
{
    /* Ping a quiet platform connection after 30 s, give it up after 60 s:
     * a half-open connection is found within a minute. */
    static const lws_retry_bo_t retry = {
        .secs_since_valid_ping = 30,
        .secs_since_valid_hangup = 60,
    };
    return &retry;
}

struct lws_context *bt_chat__ctx(const bt_chat *c)
{
    return c->ctx;
}

void bt_chat_start(bt_chat *c, struct lws_context *ctx)
{
    c->ctx = ctx;
    for (size_t i = 0; i < c->nsf; i++)
        c->sf[i]->ops->start(c->sf[i]);
}

void bt_chat_stop(bt_chat *c)
{
    for (size_t i = 0; i < c->nsf; i++)
        c->sf[i]->ops->stop(c->sf[i]);
}

bt_chat_task *bt_chat__task(struct bt_chat__surface *sf, int op, json_t *in)
{
    bt_chat_task *t = bt_calloc(1, sizeof *t);
    t->kind = BT_CHAT__T_SURFACE;
    t->chat = sf->chat;
    t->sf = sf;
    t->op = op;
    t->in = in;
    return t;
}

void bt_chat__task_free(bt_chat_task *t)
{
    if (!t)
        return;
    json_decref(t->in);
    json_decref(t->out);
    free(t->http_reply);
    free(t);
}

bool bt_chat__submit(bt_chat *c, bt_chat_task *t)
{
    if (c->submit(c->host, t))
        return true;
    bt_chat__task_free(t);
    return false;
}

static struct pending *pending_of(bt_chat *c, const char *aid, bool make)
{
    for (size_t i = 0; i < c->ncards; i++)
        if (strcmp(c->cards[i].approval_id, aid) == 0)
            return &c->cards[i];
    if (!make)
        return NULL;
    if (c->ncards == CARDS_MAX) {
        /* Full: forget the oldest idle entry. */
        size_t k = 0;
        for (size_t i = 0; i < c->ncards; i++)
            if (!c->cards[i].in_flight && !c->cards[i].card &&
                (k == c->ncards || c->cards[i].last_ms < c->cards[k].last_ms))
                k = i;
        if (c->cards[k].in_flight || c->cards[k].card)
            return NULL;
        free(c->cards[k].approval_id);
        c->cards[k] = c->cards[--c->ncards];
    }
    struct pending *p = &c->cards[c->ncards++];
    memset(p, 0, sizeof *p);
    p->approval_id = bt_strdup(aid);
    return p;
}

/* Send the waiting update of p when its turn has come. */
static void pending_flush(bt_chat *c, struct pending *p, int64_t now)
{
    if (!p->card || p->in_flight || now - p->last_ms < c->update_interval_ms)
        return;
    bt_chat_task *t = bt_calloc(1, sizeof *t);
    t->kind = BT_CHAT__T_CARD;
    t->chat = c;
    t->in = p->card;
    p->card = NULL;
    if (!c->submit(c->host, t)) {
        p->card = t->in; /* busy: next tick */
        t->in = NULL;
        bt_chat__task_free(t);
        return;
    }
    p->in_flight = true;
    p->last_ms = now;
}

void bt_chat_card(bt_chat *c, const json_t *card)
{
    const char *aid = json_string_value(json_object_get(card, "approval_id"));
    struct pending *p = aid ? pending_of(c, aid, true) : NULL;
    if (!p)
        return;
    json_decref(p->card);
    p->card = json_incref((json_t *)card);
    pending_flush(c, p, bt_mono_ms());
}

void bt_chat_tick(bt_chat *c, int64_t now_ms)
{
    for (size_t i = 0; i < c->nsf; i++)
        c->sf[i]->ops->tick(c->sf[i], now_ms);
    size_t k = 0;
    for (size_t i = 0; i < c->ncards; i++) {
        struct pending *p = &c->cards[i];
        pending_flush(c, p, now_ms);
        /* Idle for a minute: forget it (the store keeps the posts). */
        if (!p->in_flight && !p->card && now_ms - p->last_ms > 60000) {
            free(p->approval_id);
            continue;
        }
        c->cards[k++] = *p;
    }
    c->ncards = k;
}

/* ---- tasks ------------------------------------------------------------------------ */

static struct bt_chat__surface *surface_named(bt_chat *c, const char *name)
{
    for (size_t i = 0; name && i < c->nsf; i++)
        if (strcmp(c->sf[i]->ops->name, name) == 0)
            return c->sf[i];
    return NULL;
}

/* T_CARD on a worker: every post of the approval shows the card. The card
 * is read again here, so the post shows the newest state even when the
 * update waited in the queue. */
static void card_run(bt_chat *c, bt_chat_task *t, bt_pipeline *p)
{
    const char *aid = json_string_value(json_object_get(t->in, "approval_id"));
    char err[BT_ERRLEN];
    json_t *posts = NULL;
    if (bt_store_chat_posts_of(bt_pipeline_store(p), aid, &posts, err, sizeof err) != BT_OK) {
        bt_log(BT_LOG_WARN, "chat", NULL, "card of %s: %s", aid, err);
        return;
    }
    json_t *card = json_array_size(posts) ? bt_pipeline_card(p, aid) : NULL;
    size_t i;
    json_t *post;
    json_array_foreach(posts, i, post)
    {
        if (!card)
            break;
        struct bt_chat__surface *sf =
            surface_named(c, json_string_value(json_object_get(post, "surface")));
        if (sf && sf->ops->update_post(sf, p, post, card, err, sizeof err) != BT_OK)
            bt_log(BT_LOG_WARN, "chat", NULL, "%s: updating the card of %s: %s", sf->ops->name, aid,
                   err);
    }
    json_decref(card);
    json_decref(posts);
}

void bt_chat_task_run(bt_chat_task *t, const bt_config *cfg, bt_pipeline *p, json_t *cards)
{
    (void)cfg;
    if (t->kind == BT_CHAT__T_CARD)
        card_run(t->chat, t, p);
    else
        t->sf->ops->run(t->sf, t, p, cards);
}

void bt_chat_task_done(bt_chat *c, bt_chat_task *t)
{
    if (t->kind == BT_CHAT__T_CARD) {
        const char *aid = json_string_value(json_object_get(t->in, "approval_id"));
        struct pending *p = aid ? pending_of(c, aid, false) : NULL;
        if (p)
            p->in_flight = false;
    } else if (t->sf) {
        t->sf->ops->done(t->sf, t);
    }
    bt_chat__task_free(t);
}

bool bt_chat__claim(bt_pipeline *p, const char *surface, const char *key)
{
    char err[BT_ERRLEN];
    bool claimed = false;
    if (bt_store_chat_claim(bt_pipeline_store(p), key, &claimed, err, sizeof err) != BT_OK) {
        /* Without the claim a duplicate could run twice: drop the event
         * (the person sees no answer and may ask again). */
        bt_log(BT_LOG_ERROR, surface, NULL, "claiming %s: %s", key, err);
        return false;
    }
    if (!claimed)
        bt_log(BT_LOG_INFO, surface, NULL, "%s was handled already; skipped", key);
    return claimed;
}

/* ---- HTTP callbacks ------------------------------------------------------------------ */

bool bt_chat_http_path(const bt_chat *c, const char *uri)
{
    for (size_t i = 0; c && uri && i < c->nsf; i++) {
        const char *path = strcmp(c->sf[i]->ops->name, "mattermost") == 0
                               ? bt_chat__mattermost_path(c->sf[i])
                               : NULL;
        if (path && strcmp(path, uri) == 0)
            return true;
    }
    return false;
}

bt_chat_task *bt_chat_http_task(bt_chat *c, const char *uri, const char *body, size_t len,
                                unsigned int *status, char **reply)
{
    *reply = NULL;
    for (size_t i = 0; c && i < c->nsf; i++) {
        const char *path = strcmp(c->sf[i]->ops->name, "mattermost") == 0
                               ? bt_chat__mattermost_path(c->sf[i])
                               : NULL;
        if (path && strcmp(path, uri) == 0)
            return bt_chat__mattermost_http(c->sf[i], body, len, status, reply);
    }
    *status = 404;
    *reply = bt_strdup("{\"error\":\"not found\"}");
    return NULL;
}

char *bt_chat_task_http_reply(const bt_chat_task *t, unsigned int *status)
{
    *status = t->http_status ? t->http_status : 500;
    return bt_strdup(t->http_reply ? t->http_reply : "{}");
}

json_t *bt_chat_status(const bt_chat *c)
{
    json_t *o = json_object();
    for (size_t i = 0; c && i < c->nsf; i++)
        json_object_set_new(o, c->sf[i]->ops->name, c->sf[i]->ops->status(c->sf[i]));
    return o;
}

/* ---- URLs ---- */

/* The host part of an http(s) URL after its scheme (borrowed, length in
 * *n): up to ':', '/', '?' or the end; an IPv6 literal keeps its brackets. */
const char *bt_chat__url_host(const char *rest, size_t *n)
{
    const char *e = rest;
    if (*e == '[') {
        e = strchr(rest, ']');
        e = e ? e + 1 : rest + strlen(rest);
    } else {
        while (*e && *e != ':' && *e != '/' && *e != '?' && *e != '#')
            e++;
    }
    *n = (size_t)(e - rest);
    return rest;
}

/* https://..., or http:// to this machine only (for tests). */
bool bt_chat__url_acceptable(const char *url)
{
    if (strncmp(url, "https://", 8) == 0)
        return url[8] != '\0';
    if (strncmp(url, "http://", 7) != 0)
        return false;
    size_t n;
    const char *h = bt_chat__url_host(url + 7, &n);
    return (n == 9 && strncmp(h, "127.0.0.1", 9) == 0) ||
           (n == 9 && strncmp(h, "localhost", 9) == 0) || (n == 5 && strncmp(h, "[::1]", 5) == 0);
}

/* ---- cards: the wording every surface shares ---- */

const char *bt_chat__card_title(const json_t *card)
{
    const char *state = json_string_value(json_object_get(card, "state"));
    const char *xs =
        json_string_value(json_object_get(json_object_get(card, "execution"), "state"));
    if (!state)
        return "Plan";
    if (strcmp(state, "pending") == 0)
        return "Approval needed";
    if (strcmp(state, "releasing") == 0)
        return "Step by step: waiting for the next release";
    if (strcmp(state, "denied") == 0)
        return "Denied: nothing ran";
    if (strcmp(state, "expired") == 0)
        return "Expired: nothing ran";
    if (strcmp(state, "cancelled") == 0)
        return "Withdrawn: nothing ran";
    if (xs && strcmp(xs, "completed") == 0)
        return "Done";
    if (xs && (strcmp(xs, "failed") == 0 || strcmp(xs, "timed_out") == 0 ||
               strcmp(xs, "interrupted") == 0))
        return "Failed";
    if (xs && strcmp(xs, "running") == 0)
        return "Running";
    return "Approved";
}

char *bt_chat__joined(const json_t *list, const char *none)
{
    bt_buf b = BT_BUF_INIT(0);
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        if (!json_is_string(v))
            continue;
        if (b.len)
            bt_buf_puts(&b, ", ");
        bt_buf_puts(&b, json_string_value(v));
    }
    if (!b.len)
        bt_buf_puts(&b, none);
    return bt_buf_steal(&b);
}

bool bt_chat__card_open(const json_t *card)
{
    const char *state = json_string_value(json_object_get(card, "state"));
    return state && (strcmp(state, "pending") == 0 || strcmp(state, "releasing") == 0);
}

const char *bt_chat__step_state(const json_t *card, const json_t *step)
{
    const char *state = json_string_value(json_object_get(card, "state"));
    const char *s = json_string_value(json_object_get(step, "state"));
    bool waiting = !s || strcmp(s, "pending") == 0;
    if (waiting && state &&
        (strcmp(state, "denied") == 0 || strcmp(state, "expired") == 0 ||
         strcmp(state, "cancelled") == 0))
        return "not run";
    return s ? s : "pending";
}

char *bt_chat__progress(const json_t *execution)
{
    long long done = json_integer_value(json_object_get(execution, "done"));
    long long total = json_integer_value(json_object_get(execution, "total"));
    const char *state = json_string_value(json_object_get(execution, "state"));
    int filled = total > 0 ? (int)(done * 10 / total) : 0;
    bt_buf b = BT_BUF_INIT(0);
    for (int k = 0; k < 10; k++)
        bt_buf_puts(&b, k < filled ? "\xe2\x96\xb0" : "\xe2\x96\xb1"); /* ▰ ▱ */
    bt_buf_printf(&b, " %lld/%lld \xc2\xb7 %s", done, total, state ? state : "?");
    return bt_buf_steal(&b);
}

void bt_chat__expires(const json_t *card, char out[32])
{
    out[0] = '\0';
    int64_t exp = json_integer_value(json_object_get(card, "expires_ms"));
    if (exp <= 0)
        return;
    time_t secs = (time_t)(exp / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(out, 32, "%H:%M UTC", &tm);
}

/* ---- text -------------------------------------------------------------------------------- */

char *bt_chat__clip(const char *s, size_t max)
{
    if (!s)
        return bt_strdup("");
    size_t n = strlen(s);
    if (n <= max)
        return bt_strdup(s);
    static const char ell[] = "\xe2\x80\xa6"; /* … */
    size_t keep = max > sizeof ell - 1 ? max - (sizeof ell - 1) : 0;
    while (keep > 0 && ((unsigned char)s[keep] & 0xC0) == 0x80)
        keep--; /* never split a character */
    char *out = bt_malloc(keep + sizeof ell);
    memcpy(out, s, keep);
    memcpy(out + keep, ell, sizeof ell);
    return out;
}

/* ---- HTTP client ------------------------------------------------------------------------- */

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    bt_buf *b = arg;
    size_t len = size * n;
    return bt_buf_append(b, data, len) == BT_OK ? len : 0; /* 0 aborts past the cap */
}

/* Sleep ms milliseconds (bounded by the caller). */
static void nap_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    for (int i = 0; i < 100 && nanosleep(&ts, &ts) != 0; i++)
        ; /* interrupted by a signal: sleep the rest */
}

enum bt_err bt_chat__http(const char *method, const char *url, const char *bearer,
                          const json_t *body, long *status, json_t **out, int64_t *waited_ms,
                          char *err, size_t errlen)
{
    *status = 0;
    *out = NULL;
    if (waited_ms)
        *waited_ms = 0;
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    char *auth = bearer ? bt_asprintf("Authorization: Bearer %s", bearer) : NULL;
    enum bt_err e = BT_OK;
    for (int attempt = 1; attempt <= HTTP_TRIES; attempt++) {
        CURL *h = curl_easy_init();
        if (!h) {
            bt_fmt(err, errlen, "libcurl could not make a handle");
            e = BT_ENOMEM;
            break;
        }
        struct curl_slist *hdr = NULL;
        hdr = curl_slist_append(hdr, "Accept: application/json");
        if (text)
            hdr = curl_slist_append(hdr, "Content-Type: application/json; charset=utf-8");
        if (auth)
            hdr = curl_slist_append(hdr, auth);
        bt_buf reply = BT_BUF_INIT(HTTP_BODY_MAX);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, HTTP_CONNECT_TIMEOUT_MS);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, HTTP_TIMEOUT_MS);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &reply);
        if (text)
            curl_easy_setopt(h, CURLOPT_POSTFIELDS, text);
        CURLcode rc = curl_easy_perform(h);
        long code = 0;
        curl_off_t retry_after = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_getinfo(h, CURLINFO_RETRY_AFTER, &retry_after);
        curl_slist_free_all(hdr);
        curl_easy_cleanup(h);
        if (rc != CURLE_OK) {
            bt_fmt(err, errlen, "%s: %s", method, curl_easy_strerror(rc));
            e = rc == CURLE_OPERATION_TIMEDOUT ? BT_ETIMEOUT : BT_EUNAVAIL;
            bt_buf_free(&reply);
            break;
        }
        *status = code;
        if (code == 429 && attempt < HTTP_TRIES) {
            int64_t wait = retry_after > 0 ? (int64_t)retry_after * 1000 : 1000;
            if (wait > RETRY_AFTER_MAX_S * 1000)
                wait = RETRY_AFTER_MAX_S * 1000;
            bt_log(BT_LOG_WARN, "chat", NULL, "rate limited (429); waiting %lld ms as asked",
                   (long long)wait);
            nap_ms(wait);
            if (waited_ms)
                *waited_ms += wait;
            bt_buf_free(&reply);
            continue;
        }
        json_error_t jerr;
        *out = reply.len ? json_loadb(reply.data, reply.len, 0, &jerr) : NULL;
        bt_buf_free(&reply);
        break;
    }
    free(text);
    free(auth);
    return e;
}
