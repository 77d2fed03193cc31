/*
 * server.c - `baton serve`: the libwebsockets loop, the worker pool and its
 * queues, the console protocol and the metrics.
 *
 * Threads. The loop thread (bt_server_run's caller) is the only one that
 * touches lws objects and the connection list. Workers take jobs {connection
 * id, user, message} from a bounded queue (mutex + condvar), run them on
 * their own bt_pipeline and bt_store, push the messages to send onto the
 * result queue and call lws_cancel_service(), the one thread-safe lws call.
 * The loop drains results in LWS_CALLBACK_EVENT_WAIT_CANCELLED and finds the
 * connection by id, so a result for a connection that closed meanwhile is
 * dropped safely. Each connection has a capped outgoing queue written one
 * message per WRITEABLE callback, with LWS_PRE bytes of headroom.
 *
 * Counters shared by both sides (metrics) sit under their own mutex.
 *
 * With a PostgreSQL store one more thread, the listener, waits on a store
 * handle of its own for the approval ids other processes (and this one)
 * announce when they change something (bt_store_changes), and hands them
 * to the loop like a worker's result; the loop asks a worker to rebuild
 * exactly those cards, so a decision made on another host shows here at
 * once instead of at the next 5 s refresh (which stays, as the fallback).
 */
#include "bot/server.h"
#include "bot/console/console.h"
#include "bot/chat/chat.h"

#include <errno.h>
#include <pthread.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libwebsockets.h>

#include "bot/log.h"
#include "bot/store/store.h"
#include "pipeline/pipeline.h"

#define DEFAULT_LISTEN "127.0.0.1:8080"
#define JOB_QUEUE_MAX 256           /* jobs waiting for a worker */
#define OUTQ_MAX 4096               /* messages waiting to be written per connection */
#define OUTQ_BYTES_MAX (8u << 20)   /* and their bytes */
#define SWEEP_INTERVAL_US 5000000LL /* approval timers, store housekeeping */
#define TICK_US 250000LL            /* idle checks and the stop flag */
#define STOP_WAIT_MS 30000          /* how long workers may take to finish on SIGTERM */
#define HISTORY_MAX 20
#define METRIC_KEYS_MAX 256
#define USERS_MAX 1024

static const double latency_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                         0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
#define NBUCKETS (sizeof latency_buckets / sizeof latency_buckets[0])

#define CARDS_MAX 2000                  /* cards kept for replay */
#define CARD_KEEP_MS (30LL * 60 * 1000) /* an ended card is replayed this long */
#define REFRESH_HOT_MS 250              /* running executions: progress */
#define REFRESH_FULL_MS 5000            /* everything, incl. other processes' decisions */
#define AUDIT_MAX 500
#define WATCH_MS 30000      /* after a decision, until the execution shows */
#define LISTEN_WAIT_MS 1000 /* the listener's wait, so it sees the stop flag */
#define CHANGED_MAX 2000    /* announced ids waiting; past it, refresh everything */

#define GEN_RETIRED_MAX 8   /* reloads in flight before another is refused */
#define CHAT_BODY_MAX 65536 /* a chat platform's callback */

enum job_kind { JOB_MESSAGE, JOB_SWEEP, JOB_REFRESH, JOB_RELOAD, JOB_CHAT };

/* One configuration generation: the configuration and one pipeline per
 * thread slot built from it. SIGHUP builds a new one; a thread picks up the
 * current generation for each job, and a replaced generation is freed when
 * its last job ends. */
struct gen {
    bt_config *cfg;
    bool own_cfg; /* the first one is the caller's */
    bt_pipeline **p;
    int nslots;
    int users; /* jobs running on it (under bt_server.mu) */
    unsigned long long number;
};

struct job {
    enum job_kind kind;
    uint64_t conn_id;
    char *user; /* signed-in user or NULL */
    json_t *msg;
    bt_chat_task *task; /* JOB_CHAT */
    struct job *next;
};

/* A result: messages for one connection (or none), and for a hello the
 * user it signed in as. */
struct result {
    uint64_t conn_id;
    json_t *messages; /* array */
    char *user;
    char *role;
    json_t *cards;       /* cards that may have changed (array or NULL) */
    bool refresh;        /* the answer to a polling JOB_REFRESH */
    bool change_refresh; /* the answer to a JOB_REFRESH for announced changes */
    json_t *changed;     /* from the listener: approval ids announced, or "*" */
    bt_chat_task *task;  /* a JOB_CHAT that ran (conn_id: its HTTP request, or 0) */
    struct result *next;
};

/* The last known card of an approval (loop thread only). */
struct card_entry {
    char *approval_id;
    json_t *card;
    char *sig; /* the card's canonical text, to see changes */
    int64_t seen_ms;
    int64_t watch_until_ms; /* a decision is being acted on: watch closely */
};

struct counter {
    char *key; /* label set text, e.g. intent="x",kind="answer" */
    unsigned long long n;
};

/* Two histogram families: time per console message (by type) and per
 * pipeline stage (A classify .. E execute). */
enum hist_family { HIST_MESSAGE, HIST_STAGE };
static const char *const hist_names[] = {"baton_message_duration_seconds",
                                         "baton_stage_duration_seconds"};
static const char *const hist_labels[] = {"type", "stage"};
static const char *const hist_help[] = {
    "Time to handle a console message, by message type.",
    "Time spent in each pipeline stage (A classify, B select, C plan, D answer, E execute)."};

struct histogram {
    enum hist_family family;
    char *stage;
    unsigned long long bucket[NBUCKETS];
    unsigned long long count;
    double sum;
};

struct metrics {
    pthread_mutex_t mu;
    struct counter requests[METRIC_KEYS_MAX];
    size_t nrequests;
    struct counter executions[METRIC_KEYS_MAX];
    size_t nexecutions;
    struct counter errors[METRIC_KEYS_MAX];
    size_t nerrors;
    struct histogram stages[32];
    size_t nstages;
    long long pending_approvals;
    int64_t store_down_ms;       /* wall time the store began failing, 0: fine */
    char store_error[BT_ERRLEN]; /* why, while it fails */
    long long open_connections;
    unsigned long long reloads_ok, reloads_failed;
    unsigned long long generation;
};

struct rate {
    char *user;
    int64_t window_start_ms;
    long count;
};

struct conn {
    uint64_t id;
    struct lws *wsi;
    bool is_ws;
    /* WebSocket */
    bt_buf rx;
    bool rx_toobig;
    char *user;
    char *role;
    json_t *outq;      /* array of strings waiting to be written */
    json_t *outq_keys; /* the same length: a card's approval id, or null */
    size_t outq_bytes;
    int64_t last_rx_ms;
    struct conn *next;
    /* HTTP */
    bool http_linked;         /* in the list while its answer is made */
    unsigned int http_status; /* a deferred answer's, until its headers are sent */
    bool http_post;           /* a chat callback: its body is read into rx */
    char http_uri[64];
    char *http_body;                  /* owned, or NULL when http_static is set */
    const unsigned char *http_static; /* an embedded console file */
    size_t http_len;
};

struct pss {
    struct conn *c;
};

struct bt_server {
    /* settings */
    char host[256];
    int port;
    json_t *allowed_origins; /* borrowed */
    long long max_frame;
    long long rate_limit;
    long long idle_timeout_s;
    long long nworkers;
    /* loop side */
    struct lws_context *ctx;
    struct conn *conns;
    uint64_t next_conn_id;
    struct rate rates[USERS_MAX];
    size_t nrates;
    lws_sorted_usec_list_t sweep_sul;
    lws_sorted_usec_list_t tick_sul;
    struct card_entry *cards;
    size_t ncards;
    bool refresh_in_flight;
    int64_t last_refresh_ms, last_full_refresh_ms;
    volatile sig_atomic_t *stop;
    /* queues */
    pthread_mutex_t mu;
    pthread_cond_t job_cv;
    pthread_cond_t done_cv;
    struct job *jobs_head, *jobs_tail;
    size_t njobs;
    struct result *results_head, *results_tail;
    bool stopping;
    int workers_alive;
    /* workers (then job runners): one pipeline slot each in every
     * configuration generation */
    pthread_t *threads;
    int nslots;
    long long nrunners;
    pthread_cond_t runner_cv;
    const char *store_override;
    volatile sig_atomic_t *reload;
    struct gen *gen;                      /* current, under mu */
    struct gen *retired[GEN_RETIRED_MAX]; /* replaced, still in use */
    size_t nretired;
    struct metrics m;
    bt_chat *chat; /* NULL without team chat */
    /* change notifications (PostgreSQL only) */
    bt_store *listener;        /* the listener thread's handle, or NULL */
    pthread_t listener_thread; /* running when listener is not NULL */
    pthread_cond_t stop_cv;    /* broadcast when stopping */
    json_t *changed_ids;       /* loop: announced ids to refresh (object as a set) */
    bool changed_all;          /* loop: refresh every card ("*") */
    bool change_refresh_in_flight;
};

struct worker_arg {
    struct bt_server *s;
    int index;
};

/* ---- configuration ---------------------------------------------------- */

/* Split "ADDR:PORT"; false when malformed. */
static bool parse_listen(const char *v, char *host, size_t hostlen, int *port)
{
    const char *colon = v ? strrchr(v, ':') : NULL;
    long p;
    if (!colon || colon == v || (size_t)(colon - v) >= hostlen ||
        !bt_parse_long(colon + 1, 1, 65535, &p))
        return false;
    memcpy(host, v, (size_t)(colon - v));
    host[colon - v] = '\0';
    *port = (int)p;
    return true;
}

bool bt_server_check_config(const bt_config *cfg, bt_diag *d)
{
    size_t before = bt_diag_count(d);
    const bt_yaml_doc *doc = bt_config_main(cfg);
    json_t *srv = bt_config_get(cfg, "server");
    if (!srv)
        return bt_chat_check_config(cfg, d);
    if (!json_is_object(srv)) {
        bt_diag_at(d, doc, srv, "server", "must be a mapping, not %s", bt_conf_type_name(srv));
        return false;
    }
    static const char *const keys[] = {
        "listen",         "allowed_origins", "max_frame_bytes", "rate_limit",
        "idle_timeout_s", "workers",         "job_runners",     NULL};
    bt_check_keys(d, doc, srv, keys);
    const char *listen = bt_check_string(d, doc, srv, "listen", false);
    char host[256];
    int port;
    if (listen && !parse_listen(listen, host, sizeof host, &port))
        bt_diag_at(d, doc, srv, "server.listen", "'%s' is not ADDR:PORT", listen);
    json_t *origins = bt_check_array(d, doc, srv, "allowed_origins", false);
    size_t i;
    json_t *o;
    json_array_foreach(origins, i, o)
    {
        if (!json_is_string(o))
            bt_diag_at(d, doc, origins, "server.allowed_origins", "entry %zu is not a string",
                       i + 1);
    }
    long long v;
    bt_check_int(d, doc, srv, "max_frame_bytes", false, 1024, 1048576, &v);
    bt_check_int(d, doc, srv, "rate_limit", false, 1, 10000, &v);
    bt_check_int(d, doc, srv, "idle_timeout_s", false, 10, 86400, &v);
    bt_check_int(d, doc, srv, "workers", false, 1, 64, &v);
    bt_check_int(d, doc, srv, "job_runners", false, 0, 16, &v);
    bt_chat_check_config(cfg, d);
    return bt_diag_count(d) == before;
}

static long long cfg_int(const bt_config *cfg, const char *key, long long dflt)
{
    json_t *v = bt_config_get(cfg, key);
    return json_is_integer(v) ? json_integer_value(v) : dflt;
}

/* ---- metrics ------------------------------------------------------------ */

static void counter_add(struct counter *set, size_t *n, const char *key)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp(set[i].key, key) == 0) {
            set[i].n++;
            return;
        }
    if (*n < METRIC_KEYS_MAX) {
        set[*n].key = bt_strdup(key);
        set[*n].n = 1;
        (*n)++;
    }
}

/* Metric label values: keep them to a safe alphabet so the exposition
 * format can never be broken by a name. */
static void label_value(const char *v, char *out, size_t outlen)
{
    size_t k = 0;
    for (; v && *v && k + 1 < outlen; v++)
        out[k++] = (char)((*v >= 'a' && *v <= 'z') || (*v >= 'A' && *v <= 'Z') ||
                                  (*v >= '0' && *v <= '9') || *v == '_' || *v == '-' || *v == '.'
                              ? *v
                              : '_');
    out[k] = '\0';
    if (k == 0)
        bt_strlcpy(out, "none", outlen);
}

static void metrics_response(struct metrics *m, const json_t *r)
{
    char intent[64], kind[64], key[160];
    label_value(json_string_value(json_object_get(r, "intent")), intent, sizeof intent);
    label_value(json_string_value(json_object_get(r, "kind")), kind, sizeof kind);
    bt_fmt(key, sizeof key, "intent=\"%s\",kind=\"%s\"", intent, kind);
    const char *state =
        json_string_value(json_object_get(json_object_get(r, "execution"), "state"));
    pthread_mutex_lock(&m->mu);
    counter_add(m->requests, &m->nrequests, key);
    if (state) {
        char st[64];
        label_value(state, st, sizeof st);
        bt_fmt(key, sizeof key, "state=\"%s\"", st);
        counter_add(m->executions, &m->nexecutions, key);
    }
    pthread_mutex_unlock(&m->mu);
}

static void metrics_error(struct metrics *m, const char *code)
{
    char key[96];
    bt_fmt(key, sizeof key, "code=\"%s\"", code);
    pthread_mutex_lock(&m->mu);
    counter_add(m->errors, &m->nerrors, key);
    pthread_mutex_unlock(&m->mu);
}

static void metrics_observe(struct metrics *m, enum hist_family family, const char *stage,
                            double seconds)
{
    pthread_mutex_lock(&m->mu);
    struct histogram *h = NULL;
    for (size_t i = 0; i < m->nstages; i++)
        if (m->stages[i].family == family && strcmp(m->stages[i].stage, stage) == 0)
            h = &m->stages[i];
    if (!h && m->nstages < sizeof m->stages / sizeof m->stages[0]) {
        h = &m->stages[m->nstages++];
        h->family = family;
        h->stage = bt_strdup(stage);
    }
    if (h) {
        for (size_t b = 0; b < NBUCKETS; b++)
            if (seconds <= latency_buckets[b])
                h->bucket[b]++;
        h->count++;
        h->sum += seconds;
    }
    pthread_mutex_unlock(&m->mu);
}

static void metrics_latency(struct metrics *m, const char *type, double seconds)
{
    metrics_observe(m, HIST_MESSAGE, type, seconds);
}

/* The pipeline's stage times (r.stage_us: {classify: us, ...}). */
static void metrics_stages(struct metrics *m, const json_t *r)
{
    const char *name;
    json_t *us;
    json_object_foreach(json_object_get(r, "stage_us"), name, us)
    {
        if (json_is_integer(us))
            metrics_observe(m, HIST_STAGE, name, (double)json_integer_value(us) / 1e6);
    }
}

static void put_histograms(bt_buf *b, const struct metrics *m, enum hist_family f)
{
    const char *n = hist_names[f], *l = hist_labels[f];
    bt_buf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", n, hist_help[f], n);
    for (size_t i = 0; i < m->nstages; i++) {
        const struct histogram *h = &m->stages[i];
        if (h->family != f)
            continue;
        for (size_t k = 0; k < NBUCKETS; k++)
            bt_buf_printf(b, "%s_bucket{%s=\"%s\",le=\"%g\"} %llu\n", n, l, h->stage,
                          latency_buckets[k], h->bucket[k]);
        bt_buf_printf(b,
                      "%s_bucket{%s=\"%s\",le=\"+Inf\"} %llu\n%s_sum{%s=\"%s\"} %.6f\n"
                      "%s_count{%s=\"%s\"} %llu\n",
                      n, l, h->stage, h->count, n, l, h->stage, h->sum, n, l, h->stage, h->count);
    }
}

static void put_counters(bt_buf *b, const char *name, const char *help, const struct counter *set,
                         size_t n)
{
    bt_buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    for (size_t i = 0; i < n; i++)
        bt_buf_printf(b, "%s{%s} %llu\n", name, set[i].key, set[i].n);
}

/* The connectors' circuit breakers as gauges and counters. breakers is
 * bt_pipeline_breakers' array (borrowed). */
static void put_breakers(bt_buf *b, const json_t *breakers)
{
    static const char *const states[] = {"closed", "open", "half_open"};
    bt_buf_puts(b, "# HELP baton_connector_circuit_state Circuit breaker state per connector "
                   "(1 for the current state).\n# TYPE baton_connector_circuit_state gauge\n");
    size_t i;
    json_t *br;
    json_array_foreach(breakers, i, br)
    {
        const char *name = json_string_value(json_object_get(br, "connector"));
        const char *state = json_string_value(json_object_get(br, "state"));
        for (size_t k = 0; k < 3 && name; k++)
            bt_buf_printf(b, "baton_connector_circuit_state{connector=\"%s\",state=\"%s\"} %d\n",
                          name, states[k], state && strcmp(state, states[k]) == 0);
    }
    bt_buf_puts(b, "# HELP baton_connector_failures Consecutive transient failures per "
                   "connector.\n# TYPE baton_connector_failures gauge\n");
    json_array_foreach(breakers, i, br)
    {
        const char *name = json_string_value(json_object_get(br, "connector"));
        if (name)
            bt_buf_printf(b, "baton_connector_failures{connector=\"%s\"} %lld\n", name,
                          (long long)json_integer_value(json_object_get(br, "failures")));
    }
    bt_buf_puts(b, "# HELP baton_connector_circuit_opened_total Times each connector's circuit "
                   "opened.\n# TYPE baton_connector_circuit_opened_total counter\n");
    json_array_foreach(breakers, i, br)
    {
        const char *name = json_string_value(json_object_get(br, "connector"));
        if (name)
            bt_buf_printf(b, "baton_connector_circuit_opened_total{connector=\"%s\"} %lld\n", name,
                          (long long)json_integer_value(json_object_get(br, "times_opened")));
    }
}

static char *metrics_text(struct metrics *m, const json_t *breakers)
{
    bt_buf b = BT_BUF_INIT(1 << 20);
    put_breakers(&b, breakers);
    pthread_mutex_lock(&m->mu);
    put_counters(&b, "baton_requests_total", "Requests handled, by intent and kind.", m->requests,
                 m->nrequests);
    put_counters(&b, "baton_executions_total", "Executions reported, by final state.",
                 m->executions, m->nexecutions);
    put_counters(&b, "baton_protocol_errors_total", "Protocol errors sent, by code.", m->errors,
                 m->nerrors);
    put_histograms(&b, m, HIST_MESSAGE);
    put_histograms(&b, m, HIST_STAGE);
    bt_buf_printf(&b,
                  "# HELP baton_pending_approvals Approvals waiting for a decision.\n"
                  "# TYPE baton_pending_approvals gauge\nbaton_pending_approvals %lld\n"
                  "# HELP baton_open_connections Open console WebSocket connections.\n"
                  "# TYPE baton_open_connections gauge\nbaton_open_connections %lld\n",
                  m->pending_approvals, m->open_connections);
    bt_buf_printf(&b,
                  "# HELP baton_config_reloads_total Configuration reloads (SIGHUP), by "
                  "result.\n# TYPE baton_config_reloads_total counter\n"
                  "baton_config_reloads_total{result=\"ok\"} %llu\n"
                  "baton_config_reloads_total{result=\"failed\"} %llu\n"
                  "# HELP baton_config_generation Configuration in use (1 at start, +1 per "
                  "reload).\n# TYPE baton_config_generation gauge\nbaton_config_generation %llu\n",
                  m->reloads_ok, m->reloads_failed, m->generation);
    pthread_mutex_unlock(&m->mu);
    return bt_buf_steal(&b);
}

static void metrics_free(struct metrics *m)
{
    for (size_t i = 0; i < m->nrequests; i++)
        free(m->requests[i].key);
    for (size_t i = 0; i < m->nexecutions; i++)
        free(m->executions[i].key);
    for (size_t i = 0; i < m->nerrors; i++)
        free(m->errors[i].key);
    for (size_t i = 0; i < m->nstages; i++)
        free(m->stages[i].stage);
    pthread_mutex_destroy(&m->mu);
}

/* ---- messages ------------------------------------------------------------ */

static json_t *error_msg(struct bt_server *s, const json_t *in_reply_to, const char *code,
                         const char *message)
{
    metrics_error(&s->m, code);
    return json_pack("{s:s, s:O?, s:s, s:s}", "type", "error", "in_reply_to", in_reply_to, "code",
                     code, "message", message);
}

/* Copy the pipeline's response fields into a `reply` (or `plan` when the
 * plan waits for approval). A request answered by running read-only steps
 * is still a `reply`: `result` is kept for what a decision released. */
static json_t *reply_msg(const json_t *id, json_t *r, const json_t *card)
{
    const char *kind = json_string_value(json_object_get(r, "kind"));
    json_t *msg;
    if (kind && strcmp(kind, "approval") == 0 && json_object_get(r, "approval_id")) {
        msg = json_pack("{s:s, s:O?, s:O, s:O, s:O?, s:O?}", "type", "plan", "in_reply_to", id,
                        "plan", json_object_get(r, "plan"), "approval",
                        json_object_get(r, "approval"), "approval_id",
                        json_object_get(r, "approval_id"), "text", json_object_get(r, "text"));
        if (msg && card)
            json_object_set(msg, "card", (json_t *)card);
        if (!msg)
            msg = json_pack("{s:s, s:O?}", "type", "plan", "in_reply_to", id);
        return msg;
    }
    msg = json_pack("{s:s, s:O?, s:s, s:O?, s:O}", "type", "reply", "in_reply_to", id, "kind",
                    kind ? kind : "error", "text", json_object_get(r, "text"), "data", r);
    return msg;
}

static const char *role_of(const bt_config *cfg, const char *user)
{
    json_t *u = json_object_get(bt_config_get(cfg, "users"), user);
    const char *role = json_string_value(json_object_get(u, "role"));
    return role ? role : (u ? "viewer" : NULL);
}

/* A field that must be a non-empty string; NULL when missing. */
static const char *field_str(const json_t *msg, const char *key)
{
    const char *v = json_string_value(json_object_get(msg, key));
    return v && *v ? v : NULL;
}

/* card as user (of role) sees it: a new object sharing card's members plus
 * its own `you`, or NULL when user may not see it. Shallow: a card goes to
 * every connection allowed to see it, on the loop thread, and only `you`
 * differs between them. */
static json_t *card_as_seen(const json_t *card, const char *user, const char *role)
{
    json_t *mine = json_copy((json_t *)card);
    if (!bt_pipeline_card_for(mine, user, role)) {
        json_decref(mine);
        return NULL;
    }
    return mine;
}

/* The card of approval_id for the result's cards (to every viewer) and,
 * returned borrowed, as user sees it (for the reply to user). */
static json_t *result_card(const bt_config *cfg, bt_pipeline *p, struct result *res,
                           const char *approval_id, const char *user)
{
    json_t *card = approval_id ? bt_pipeline_card(p, approval_id) : NULL;
    if (!card)
        return NULL;
    if (!res->cards)
        res->cards = json_array();
    json_array_append(res->cards, card);
    json_t *mine = card_as_seen(card, user, role_of(cfg, user));
    json_decref(card);
    return mine;
}

/* `audit`: a request's audit trail, for its requester, approvers and
 * admins. */
static json_t *audit_msg(struct bt_server *s, const bt_config *cfg, bt_store *st, const json_t *id,
                         const char *user, const char *request_id)
{
    char err[BT_ERRLEN];
    json_t *req = NULL, *entries = NULL;
    enum bt_err e = bt_store_request_get(st, request_id, &req, err, sizeof err);
    if (e == BT_ENOENT || e == BT_EINVAL)
        return error_msg(s, id, "not_found", "there is no such request");
    if (e != BT_OK) {
        bt_log(BT_LOG_ERROR, "server", request_id, "audit: %s", err);
        return error_msg(s, id, "internal", "the store failed");
    }
    const char *owner = json_string_value(json_object_get(req, "user"));
    const char *role = role_of(cfg, user);
    bool may = (owner && strcmp(owner, user) == 0) ||
               (role && (strcmp(role, "approver") == 0 || strcmp(role, "admin") == 0));
    json_decref(req);
    if (!may)
        return error_msg(s, id, "forbidden",
                         "only the requester, approvers and admins see a request's audit trail");
    if (bt_store_audit_of(st, request_id, AUDIT_MAX, &entries, err, sizeof err) != BT_OK) {
        bt_log(BT_LOG_ERROR, "server", request_id, "audit: %s", err);
        return error_msg(s, id, "internal", "the store failed");
    }
    json_t *out = json_array();
    size_t i;
    json_t *en;
    json_array_foreach(entries, i, en)
    {
        json_array_append_new(
            out,
            json_pack("{s:O?, s:O?, s:O?, s:O?, s:O?}", "seq", json_object_get(en, "seq"), "ts_ms",
                      json_object_get(en, "ts_ms"), "actor", json_object_get(en, "actor"), "action",
                      json_object_get(en, "event"), "detail", json_object_get(en, "detail")));
    }
    json_decref(entries);
    return json_pack("{s:s, s:O?, s:s, s:o}", "type", "audit", "in_reply_to", id, "request_id",
                     request_id, "entries", out);
}

/* Run one client message on a worker. Returns a result (never NULL). */
static struct result *run_message(struct bt_server *s, const bt_config *cfg, bt_pipeline *p,
                                  const struct job *j)
{
    bt_store *st = bt_pipeline_store(p);
    struct result *res = bt_calloc(1, sizeof *res);
    res->conn_id = j->conn_id;
    res->messages = json_array();
    const json_t *id = json_object_get(j->msg, "id");
    const char *type = json_string_value(json_object_get(j->msg, "type"));
    char err[BT_ERRLEN];
    int64_t t0 = bt_mono_ms();
    if (strcmp(type, "hello") == 0) {
        const char *token = field_str(j->msg, "token");
        char hash[65];
        char *user = NULL;
        bt_sha256_hex(token, strlen(token), hash);
        enum bt_err e = bt_store_console_token_user(st, hash, &user, err, sizeof err);
        const char *role = e == BT_OK ? role_of(cfg, user) : NULL;
        if (e == BT_OK && role) {
            json_array_append_new(res->messages,
                                  json_pack("{s:s, s:O?, s:s, s:s}", "type", "welcome",
                                            "in_reply_to", id, "user", user, "role", role));
            json_t *notices = bt_pipeline_notices(p, user);
            size_t i;
            json_t *n;
            json_array_foreach(notices, i, n)
            {
                json_array_append_new(res->messages, json_pack("{s:s, s:O?}", "type", "notice",
                                                               "text", json_object_get(n, "text")));
            }
            json_decref(notices);
            res->user = user;
            res->role = bt_strdup(role);
            bt_log(BT_LOG_INFO, "server", NULL, "connection %llu signed in as %s",
                   (unsigned long long)j->conn_id, user);
        } else {
            if (e != BT_OK && e != BT_ENOENT)
                bt_log(BT_LOG_ERROR, "server", NULL, "token look-up failed: %s", err);
            json_array_append_new(res->messages,
                                  e == BT_OK || e == BT_ENOENT
                                      ? error_msg(s, id, "bad_token",
                                                  "this token is not valid; run `baton token "
                                                  "USER` for a new one")
                                      : error_msg(s, id, "internal", "the store failed"));
            free(user);
        }
    } else if (strcmp(type, "say") == 0) {
        json_t *r = bt_pipeline_handle(p, field_str(j->msg, "text"), j->user,
                                       field_str(j->msg, "channel") ? field_str(j->msg, "channel")
                                                                    : "console");
        if (r) {
            metrics_response(&s->m, r);
            metrics_stages(&s->m, r);
            bt_log(BT_LOG_INFO, "server", json_string_value(json_object_get(r, "request_id")),
                   "say from %s: kind %s", j->user, json_string_value(json_object_get(r, "kind")));
            json_t *card = result_card(
                cfg, p, res, json_string_value(json_object_get(r, "approval_id")), j->user);
            json_array_append_new(res->messages, reply_msg(id, r, card));
            json_decref(card);
            json_decref(r);
        } else {
            json_array_append_new(res->messages,
                                  error_msg(s, id, "internal", "the request failed"));
        }
    } else if (strcmp(type, "decide") == 0 || strcmp(type, "cancel") == 0) {
        const char *approval = field_str(j->msg, "approval");
        json_t *r;
        if (type[0] == 'c') {
            r = bt_pipeline_cancel(p, approval, j->user, "console");
        } else {
            json_t *step = json_object_get(j->msg, "step");
            int st0 = json_is_integer(step) ? (int)json_integer_value(step) - 1 : -1;
            r = bt_pipeline_decide(p, approval, j->user, field_str(j->msg, "decision"), st0,
                                   "console", NULL);
        }
        if (r) {
            metrics_response(&s->m, r);
            json_t *msg = json_pack("{s:s, s:O?, s:O?, s:O?, s:O?, s:O}", "type",
                                    json_object_get(r, "execution") ? "result" : "reply",
                                    "in_reply_to", id, "kind", json_object_get(r, "kind"), "status",
                                    json_object_get(r, "status"), "text",
                                    json_object_get(r, "text"), "data", r);
            json_array_append_new(res->messages, msg);
            json_decref(result_card(cfg, p, res, approval, j->user));
            if (json_object_get(r, "execution")) {
                /* It may have queued a background job for the runners. */
                pthread_mutex_lock(&s->mu);
                pthread_cond_broadcast(&s->runner_cv);
                pthread_mutex_unlock(&s->mu);
            }
            json_decref(r);
        } else {
            json_array_append_new(res->messages,
                                  error_msg(s, id, "internal", "the decision failed"));
        }
    } else if (strcmp(type, "history") == 0) {
        json_t *list = NULL;
        if (bt_store_requests_of(st, j->user, HISTORY_MAX, &list, err, sizeof err) == BT_OK) {
            json_array_append_new(res->messages,
                                  json_pack("{s:s, s:O?, s:s, s:o}", "type", "history",
                                            "in_reply_to", id, "user", j->user, "requests", list));
        } else {
            bt_log(BT_LOG_ERROR, "server", NULL, "history: %s", err);
            json_array_append_new(res->messages, error_msg(s, id, "internal", "the store failed"));
        }
    } else if (strcmp(type, "audit") == 0) {
        json_array_append_new(res->messages,
                              audit_msg(s, cfg, st, id, j->user, field_str(j->msg, "request_id")));
    } else { /* pending */
        json_t *list = bt_pipeline_pending(p);
        json_array_append_new(res->messages,
                              json_pack("{s:s, s:O?, s:o}", "type", "pending", "in_reply_to", id,
                                        "approvals", list ? list : json_array()));
    }
    metrics_latency(&s->m, type, (double)(bt_mono_ms() - t0) / 1000.0);
    return res;
}

/* ---- worker pool ----------------------------------------------------------- */

static void job_free(struct job *j)
{
    free(j->user);
    json_decref(j->msg);
    free(j);
}

static void result_free(struct result *r)
{
    json_decref(r->messages);
    json_decref(r->cards);
    json_decref(r->changed);
    free(r->user);
    free(r->role);
    free(r);
}

/* Rebuild the cards of the approvals named in msg.ids and, when msg.full,
 * of every approval waiting: progress of running executions, and decisions
 * made elsewhere (the CLI, another process). msg.announced: the ids came
 * from change notifications. */
static struct result *run_refresh(struct bt_server *s, bt_pipeline *p, const json_t *msg)
{
    struct result *res = bt_calloc(1, sizeof *res);
    res->messages = json_array();
    res->cards = json_array();
    res->change_refresh = json_is_true(json_object_get(msg, "announced"));
    res->refresh = !res->change_refresh;
    json_t *ids = json_deep_copy(json_object_get(msg, "ids"));
    if (!json_is_array(ids)) {
        json_decref(ids);
        ids = json_array();
    }
    if (json_is_true(json_object_get(msg, "full"))) {
        json_t *pending = bt_pipeline_pending(p);
        size_t i;
        json_t *a;
        json_array_foreach(pending, i, a)
        {
            json_array_append(ids, json_object_get(a, "approval_id"));
        }
        pthread_mutex_lock(&s->m.mu);
        s->m.pending_approvals = (long long)json_array_size(pending);
        pthread_mutex_unlock(&s->m.mu);
        json_decref(pending);
    }
    json_t *done = json_object();
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v)
    {
        const char *aid = json_string_value(v);
        if (!aid || json_object_get(done, aid))
            continue;
        json_object_set_new(done, aid, json_true());
        json_t *card = bt_pipeline_card(p, aid);
        if (card)
            json_array_append_new(res->cards, card);
    }
    json_decref(done);
    json_decref(ids);
    return res;
}

/* ---- configuration generations ------------------------------------------ */

static void gen_free(struct gen *g)
{
    if (!g)
        return;
    /* Siblings first: they borrow from the first pipeline. */
    for (int i = g->nslots; i-- > 0;)
        bt_pipeline_free(g->p[i]);
    free(g->p);
    if (g->own_cfg)
        bt_config_free(g->cfg);
    free(g);
}

/* A generation from cfg (own: freed with it), one pipeline per slot. NULL
 * with the problems in d when anything cannot be built. */
static struct gen *gen_build(struct bt_server *s, bt_config *cfg, bool own, bt_diag *d)
{
    struct gen *g = bt_calloc(1, sizeof *g);
    g->cfg = cfg;
    g->own_cfg = own;
    g->nslots = s->nslots;
    g->p = bt_calloc((size_t)g->nslots, sizeof *g->p);
    char err[BT_ERRLEN];
    for (int i = 0; i < g->nslots; i++) {
        /* The first pipeline compiles everything; the others share its
         * read-only parts and its connectors (one circuit breaker per
         * connector per process) and have their own store handles. */
        if (i == 0)
            g->p[i] = bt_pipeline_new(cfg, s->store_override, d);
        else if (!(g->p[i] = bt_pipeline_sibling(g->p[0], err, sizeof err)))
            bt_diag_add(d, NULL, 0, NULL, "%s", err);
        if (!g->p[i]) {
            if (bt_diag_count(d) == 0)
                bt_diag_add(d, NULL, 0, NULL, "cannot build a pipeline");
            g->own_cfg = false; /* the caller keeps cfg on failure */
            gen_free(g);
            return NULL;
        }
    }
    return g;
}

/* The current generation, held until gen_release. */
static struct gen *gen_acquire(struct bt_server *s)
{
    pthread_mutex_lock(&s->mu);
    struct gen *g = s->gen;
    g->users++;
    pthread_mutex_unlock(&s->mu);
    return g;
}

static void gen_release(struct bt_server *s, struct gen *g)
{
    bool last = false;
    pthread_mutex_lock(&s->mu);
    g->users--;
    if (g != s->gen && g->users == 0) {
        for (size_t i = 0; i < s->nretired; i++)
            if (s->retired[i] == g) {
                s->retired[i] = s->retired[--s->nretired];
                last = true;
                break;
            }
    }
    pthread_mutex_unlock(&s->mu);
    if (last)
        gen_free(g);
}

/* SIGHUP: read the configuration directory again and, when every part of
 * it checks, switch to it; jobs already running finish on the old one.
 * Connections stay open. A bad file keeps the old configuration, and the
 * log says why. */
static void run_reload(struct bt_server *s, const struct gen *now)
{
    bt_diag *d = bt_diag_new();
    bt_config *cfg = bt_config_load(bt_config_dir(now->cfg), d);
    if (cfg)
        bt_server_check_config(cfg, d);
    struct gen *g = cfg && bt_diag_count(d) == 0 ? gen_build(s, cfg, true, d) : NULL;
    bool full = false;
    if (g) {
        pthread_mutex_lock(&s->mu);
        full = s->nretired == GEN_RETIRED_MAX;
        if (!full) {
            g->number = s->gen->number + 1;
            s->retired[s->nretired++] = s->gen;
            s->gen->users++; /* released below, so an idle old one is freed */
            struct gen *old = s->gen;
            s->gen = g;
            pthread_mutex_unlock(&s->mu);
            gen_release(s, old);
        } else {
            pthread_mutex_unlock(&s->mu);
            bt_diag_add(d, NULL, 0, NULL, "too many reloads still in use; try again");
            gen_free(g);
            g = NULL;
        }
    } else {
        bt_config_free(cfg);
    }
    pthread_mutex_lock(&s->m.mu);
    if (g) {
        s->m.reloads_ok++;
        s->m.generation = g->number;
    } else {
        s->m.reloads_failed++;
    }
    pthread_mutex_unlock(&s->m.mu);
    if (g) {
        bt_log(BT_LOG_INFO, "server", NULL,
               "configuration reloaded from %s (generation %llu); server settings such as "
               "listen and workers apply at the next start",
               bt_config_dir(g->cfg), g->number);
    } else {
        for (size_t i = 0; i < bt_diag_count(d); i++)
            bt_log(BT_LOG_ERROR, "server", NULL,
                   "reload refused, keeping the configuration in "
                   "use: %s",
                   bt_diag_get(d, i));
    }
    bt_diag_free(d);
}

static void result_push(struct bt_server *s, struct result *res)
{
    pthread_mutex_lock(&s->mu);
    if (s->results_tail)
        s->results_tail->next = res;
    else
        s->results_head = res;
    s->results_tail = res;
    pthread_mutex_unlock(&s->mu);
    lws_cancel_service(s->ctx);
}

static void thread_done(struct bt_server *s)
{
    pthread_mutex_lock(&s->mu);
    s->workers_alive--;
    pthread_cond_broadcast(&s->done_cv);
    pthread_mutex_unlock(&s->mu);
}

/* What the sweep saw of the store, for /healthz: an outage (a database
 * restarting, a full disk) is reported while it lasts. */
static void store_health(struct bt_server *s, bool ok, const char *err)
{
    pthread_mutex_lock(&s->m.mu);
    if (ok) {
        if (s->m.store_down_ms)
            bt_log(BT_LOG_INFO, "server", NULL, "the store answers again");
        s->m.store_down_ms = 0;
    } else {
        if (!s->m.store_down_ms)
            s->m.store_down_ms = bt_wall_ms();
        bt_strlcpy(s->m.store_error, err, sizeof s->m.store_error);
    }
    pthread_mutex_unlock(&s->m.mu);
}

static void *worker_main(void *arg)
{
    struct worker_arg *wa = arg;
    struct bt_server *s = wa->s;
    int slot = wa->index;
    free(wa);
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->jobs_head && !s->stopping) {
            /* Bounded: the stop flag is looked at again at least once a second. */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&s->job_cv, &s->mu, &ts);
        }
        if (s->stopping) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        struct job *j = s->jobs_head;
        s->jobs_head = j->next;
        if (!s->jobs_head)
            s->jobs_tail = NULL;
        s->njobs--;
        pthread_mutex_unlock(&s->mu);

        struct gen *g = gen_acquire(s);
        bt_pipeline *p = g->p[slot];
        struct result *res = NULL;
        if (j->kind == JOB_SWEEP) {
            json_t *events = bt_pipeline_sweep(p, bt_wall_ms());
            json_decref(events);
            char err[BT_ERRLEN];
            bool store_ok = bt_store_maintain(bt_pipeline_store(p), err, sizeof err) == BT_OK;
            if (!store_ok)
                bt_log(BT_LOG_WARN, "server", NULL, "store housekeeping: %s", err);
            store_health(s, store_ok, err);
            json_t *pending = bt_pipeline_pending(p);
            pthread_mutex_lock(&s->m.mu);
            s->m.pending_approvals = (long long)json_array_size(pending);
            pthread_mutex_unlock(&s->m.mu);
            json_decref(pending);
        } else if (j->kind == JOB_REFRESH) {
            res = run_refresh(s, p, j->msg);
        } else if (j->kind == JOB_RELOAD) {
            run_reload(s, g);
        } else if (j->kind == JOB_CHAT) {
            res = bt_calloc(1, sizeof *res);
            res->conn_id = j->conn_id;
            res->messages = json_array();
            res->cards = json_array();
            bt_chat_task_run(j->task, g->cfg, p, res->cards);
            res->task = j->task;
            j->task = NULL;
        } else {
            res = run_message(s, g->cfg, p, j);
        }
        gen_release(s, g);
        job_free(j);
        if (res)
            result_push(s, res);
    }
    thread_done(s);
    return NULL;
}

/* A job runner: runs the background executions (plans estimated longer
 * than execution.background_after_s) from the store's job queue, so
 * `baton serve` alone runs everything; `baton worker` processes can share
 * the queue. */
static void *runner_main(void *arg)
{
    struct worker_arg *wa = arg;
    struct bt_server *s = wa->s;
    int slot = wa->index;
    free(wa);
    for (;;) {
        pthread_mutex_lock(&s->mu);
        bool stop = s->stopping;
        pthread_mutex_unlock(&s->mu);
        if (stop)
            break;
        struct gen *g = gen_acquire(s);
        int did = bt_pipeline_worker_once(g->p[slot]);
        gen_release(s, g);
        if (did)
            continue;
        /* Nothing queued: wait for a decision that may queue one, at most
         * a second (jobs queued by other processes, stop). */
        pthread_mutex_lock(&s->mu);
        if (!s->stopping) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&s->runner_cv, &s->mu, &ts);
        }
        pthread_mutex_unlock(&s->mu);
    }
    thread_done(s);
    return NULL;
}

/* The listener (PostgreSQL only): waits on its own store handle for the
 * approval ids that writes in any process announce, and hands each batch
 * to the loop. Looks at the stop flag at least once per LISTEN_WAIT_MS
 * (bt_store_changes waits no longer, reconnecting included). */
static void *listener_main(void *arg)
{
    struct bt_server *s = arg;
    bool down = false;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        bool stop = s->stopping;
        pthread_mutex_unlock(&s->mu);
        if (stop)
            break;
        json_t *ids = NULL;
        char err[BT_ERRLEN];
        int64_t t0 = bt_mono_ms();
        enum bt_err e = bt_store_changes(s->listener, LISTEN_WAIT_MS, &ids, err, sizeof err);
        if (e != BT_OK) {
            if (!down)
                bt_log(BT_LOG_WARN, "server", NULL,
                       "change notifications lost: %s; until they are back, changes made by "
                       "other processes show within %d s",
                       err, REFRESH_FULL_MS / 1000);
            down = true;
            /* Never a busy loop, whatever the failure. */
            pthread_mutex_lock(&s->mu);
            int64_t left = LISTEN_WAIT_MS - (bt_mono_ms() - t0);
            if (!s->stopping && left > 0) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += (long)(left % 1000) * 1000000L;
                ts.tv_sec += (time_t)(left / 1000) + ts.tv_nsec / 1000000000L;
                ts.tv_nsec %= 1000000000L;
                pthread_cond_timedwait(&s->stop_cv, &s->mu, &ts);
            }
            pthread_mutex_unlock(&s->mu);
            continue;
        }
        bool all = false;
        size_t i;
        json_t *v;
        json_array_foreach(ids, i, v)
        {
            if (strcmp(json_string_value(v), BT_STORE_CHANGES_ALL) == 0)
                all = true;
        }
        if (all)
            bt_log(BT_LOG_WARN, "server", NULL,
                   down ? "change notifications are back; refreshing every card"
                        : "change notifications: the connection to the database was lost and "
                          "made again; refreshing every card");
        down = false;
        if (json_array_size(ids) == 0) {
            json_decref(ids);
            continue;
        }
        struct result *res = bt_calloc(1, sizeof *res);
        res->messages = json_array();
        res->changed = ids;
        result_push(s, res);
    }
    thread_done(s);
    return NULL;
}

/* Queue a job; false when the queue is full (the caller answers busy). */
static bool job_push(struct bt_server *s, struct job *j)
{
    pthread_mutex_lock(&s->mu);
    bool ok = s->njobs < JOB_QUEUE_MAX && !s->stopping;
    if (ok) {
        if (s->jobs_tail)
            s->jobs_tail->next = j;
        else
            s->jobs_head = j;
        s->jobs_tail = j;
        s->njobs++;
        pthread_cond_signal(&s->job_cv);
    }
    pthread_mutex_unlock(&s->mu);
    return ok;
}

/* ---- connections (loop thread only) -------------------------------------- */

static struct conn *conn_find(struct bt_server *s, uint64_t id)
{
    for (struct conn *c = s->conns; c; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

/* Queue a message for a connection (steals msg). Past the cap the
 * connection is too slow to read its answers and is closed. */
/* Queue a message for a connection (steals msg). key (or NULL) names what
 * the message is the newest state of (an approval's card): a queued,
 * unwritten message with the same key is replaced rather than followed, so
 * a burst of refreshes costs a slow reader one card per approval. Past the
 * caps the connection is too slow to read its answers and is closed. */
static void conn_send_keyed(struct conn *c, json_t *msg, const char *key)
{
    char *text = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    json_decref(msg);
    if (!text)
        return;
    size_t n = strlen(text);
    for (size_t i = 0; key && i < json_array_size(c->outq_keys); i++) {
        const char *k = json_string_value(json_array_get(c->outq_keys, i));
        if (k && strcmp(k, key) == 0) {
            c->outq_bytes -= strlen(json_string_value(json_array_get(c->outq, i)));
            c->outq_bytes += n;
            json_array_set_new(c->outq, i, json_string(text));
            free(text);
            return;
        }
    }
    if (json_array_size(c->outq) >= OUTQ_MAX || c->outq_bytes + n > OUTQ_BYTES_MAX) {
        bt_log(BT_LOG_WARN, "server", NULL, "connection %llu: outgoing queue full; closing",
               (unsigned long long)c->id);
        free(text);
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        return;
    }
    json_array_append_new(c->outq, json_string(text));
    json_array_append_new(c->outq_keys, key ? json_string(key) : json_null());
    c->outq_bytes += n;
    free(text);
    lws_callback_on_writable(c->wsi);
}

static void conn_send(struct conn *c, json_t *msg)
{
    conn_send_keyed(c, msg, NULL);
}

/* ---- cards (loop thread only) --------------------------------------------
 * The last known card of every approval someone may still look at, so a
 * browser that (re)connects gets the current state at once, and so a
 * change is pushed only when something really changed. */

static bool str_in(const char *v, const char *const *set)
{
    for (size_t i = 0; v && set[i]; i++)
        if (strcmp(v, set[i]) == 0)
            return true;
    return false;
}

/* An execution is moving: its progress is worth watching closely. */
static bool card_hot(const json_t *card)
{
    static const char *const moving[] = {"approved", "queued", "running", NULL};
    return str_in(json_string_value(json_object_get(json_object_get(card, "execution"), "state")),
                  moving);
}

/* Nothing more will happen to it. */
static bool card_ended(const json_t *card)
{
    static const char *const closed[] = {"denied", "cancelled", "expired", NULL};
    static const char *const over[] = {"completed", "failed",      "cancelled",
                                       "timed_out", "interrupted", NULL};
    const char *state = json_string_value(json_object_get(card, "state"));
    const char *xs =
        json_string_value(json_object_get(json_object_get(card, "execution"), "state"));
    return str_in(state, closed) || (state && strcmp(state, "releasing") != 0 &&
                                     strcmp(state, "pending") != 0 && str_in(xs, over));
}

static void card_entry_free(struct card_entry *e)
{
    free(e->approval_id);
    json_decref(e->card);
    free(e->sig);
}

/* Forget ended cards older than CARD_KEEP_MS. */
static void cards_prune(struct bt_server *s, int64_t now)
{
    size_t k = 0;
    for (size_t i = 0; i < s->ncards; i++) {
        struct card_entry *e = &s->cards[i];
        if (card_ended(e->card) && now - e->seen_ms > CARD_KEEP_MS)
            card_entry_free(e);
        else
            s->cards[k++] = *e;
    }
    s->ncards = k;
}

/* Record card (borrowed); true when it is new or changed. */
/* Keep card as the newest of its approval: CARD_SAME when nothing changed,
 * CARD_CHANGED, or CARD_NEW for an approval not seen before. */
enum card_put { CARD_SAME, CARD_CHANGED, CARD_NEW };
static enum card_put cards_put(struct bt_server *s, json_t *card)
{
    const char *aid = json_string_value(json_object_get(card, "approval_id"));
    char *sig = aid ? json_dumps(card, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    if (!sig)
        return CARD_SAME;
    int64_t now = bt_mono_ms();
    for (size_t i = 0; i < s->ncards; i++) {
        struct card_entry *e = &s->cards[i];
        if (strcmp(e->approval_id, aid) != 0)
            continue;
        /* Cards come from several workers: one read before a change must
         * not undo a newer one. */
        bool older = json_integer_value(json_object_get(card, "updated_ms")) <
                     json_integer_value(json_object_get(e->card, "updated_ms"));
        bool changed = !older && strcmp(e->sig, sig) != 0;
        if (changed) {
            free(e->sig);
            e->sig = sig;
            json_decref(e->card);
            e->card = json_incref(card);
            e->seen_ms = now;
        } else
            free(sig);
        return changed ? CARD_CHANGED : CARD_SAME;
    }
    if (s->ncards >= CARDS_MAX)
        cards_prune(s, now);
    if (s->ncards >= CARDS_MAX) { /* still full: drop the oldest */
        card_entry_free(&s->cards[0]);
        memmove(&s->cards[0], &s->cards[1], (s->ncards - 1) * sizeof s->cards[0]);
        s->ncards--;
    }
    if (!s->cards)
        s->cards = bt_calloc(CARDS_MAX, sizeof *s->cards);
    s->cards[s->ncards++] = (struct card_entry){bt_strdup(aid), json_incref(card), sig, now, 0};
    return CARD_NEW;
}

/* Push a changed card to every signed-in connection allowed to see it. */
static void cards_dispatch(struct bt_server *s, const json_t *card)
{
    for (struct conn *c = s->conns; c; c = c->next) {
        if (!c->is_ws || !c->user)
            continue;
        json_t *mine = card_as_seen(card, c->user, c->role);
        if (mine)
            conn_send_keyed(c, json_pack("{s:s, s:o}", "type", "card", "card", mine),
                            json_string_value(json_object_get(card, "approval_id")));
    }
}

/* `state`: every card c may see, oldest first (the replay after a
 * (re)connect). */
static void send_state(struct bt_server *s, struct conn *c)
{
    json_t *list = json_array();
    for (size_t i = 0; i < s->ncards; i++) {
        json_t *mine = card_as_seen(s->cards[i].card, c->user, c->role);
        if (mine)
            json_array_append_new(list, mine);
    }
    conn_send(c, json_pack("{s:s, s:o}", "type", "state", "cards", list));
}

/* A decision on approval_id was handed to a worker: what it releases is
 * about to run, so its card is watched closely for a while. */
static void cards_watch(struct bt_server *s, const char *approval_id)
{
    for (size_t i = 0; approval_id && i < s->ncards; i++)
        if (strcmp(s->cards[i].approval_id, approval_id) == 0)
            s->cards[i].watch_until_ms = bt_mono_ms() + WATCH_MS;
}

/* Ask a worker for fresh cards: often while an execution moves, now and
 * then for everything (decisions made by the CLI or another process). */
static void cards_maybe_refresh(struct bt_server *s, int64_t now)
{
    if (s->refresh_in_flight)
        return;
    bool full = now - s->last_full_refresh_ms >= REFRESH_FULL_MS;
    json_t *ids = json_array();
    for (size_t i = 0; i < s->ncards; i++)
        if (full ? !card_ended(s->cards[i].card)
                 : card_hot(s->cards[i].card) || now < s->cards[i].watch_until_ms)
            json_array_append_new(ids, json_string(s->cards[i].approval_id));
    if (!full && (json_array_size(ids) == 0 || now - s->last_refresh_ms < REFRESH_HOT_MS)) {
        json_decref(ids);
        return;
    }
    struct job *j = bt_calloc(1, sizeof *j);
    j->kind = JOB_REFRESH;
    j->msg = json_pack("{s:o, s:b}", "ids", ids, "full", full);
    if (!job_push(s, j)) {
        job_free(j);
        return;
    }
    s->refresh_in_flight = true;
    s->last_refresh_ms = now;
    if (full) {
        s->last_full_refresh_ms = now;
        cards_prune(s, now);
    }
}

/* Approval ids announced by the listener (ids: borrowed array; "*": all):
 * their cards are watched closely (what a decision released is about to
 * run) and refreshed by changes_flush. */
static void changes_note(struct bt_server *s, const json_t *ids)
{
    size_t i;
    json_t *v;
    json_array_foreach(ids, i, v)
    {
        const char *aid = json_string_value(v);
        if (strcmp(aid, BT_STORE_CHANGES_ALL) == 0) {
            s->changed_all = true;
            continue;
        }
        cards_watch(s, aid);
        if (!s->changed_all)
            json_object_set_new(s->changed_ids, aid, json_true());
    }
    /* Bounded: past CHANGED_MAX waiting ids, one full refresh is cheaper. */
    if (s->changed_all || json_object_size(s->changed_ids) > CHANGED_MAX) {
        s->changed_all = true;
        json_object_clear(s->changed_ids);
    }
}

/* Ask a worker to rebuild the cards of the announced approvals: exactly
 * those, or (after "*") every card still open and every pending approval.
 * One such refresh at a time: what is announced meanwhile waits for the
 * next one, so a burst of announcements costs a few refreshes, not one per
 * announcement. */
static void changes_flush(struct bt_server *s)
{
    if (s->change_refresh_in_flight || (!s->changed_all && json_object_size(s->changed_ids) == 0))
        return;
    json_t *ids = json_array();
    if (s->changed_all) {
        for (size_t i = 0; i < s->ncards; i++)
            if (!card_ended(s->cards[i].card))
                json_array_append_new(ids, json_string(s->cards[i].approval_id));
    } else {
        const char *aid;
        json_t *v;
        json_object_foreach(s->changed_ids, aid, v) json_array_append_new(ids, json_string(aid));
    }
    struct job *j = bt_calloc(1, sizeof *j);
    j->kind = JOB_REFRESH;
    j->msg = json_pack("{s:o, s:b, s:b}", "ids", ids, "full", s->changed_all, "announced", 1);
    if (!job_push(s, j)) {
        job_free(j); /* the queue is full: the next tick tries again */
        return;
    }
    s->change_refresh_in_flight = true;
    s->changed_all = false;
    json_object_clear(s->changed_ids);
}

/* The answer to an HTTP request a chat task made (a Mattermost button):
 * its headers and body go out from the next HTTP_WRITEABLE. */
static void http_deferred(struct conn *c, const bt_chat_task *t)
{
    unsigned int status;
    free(c->http_body);
    c->http_body = bt_chat_task_http_reply(t, &status);
    c->http_static = NULL;
    c->http_len = strlen(c->http_body);
    c->http_status = status;
    lws_callback_on_writable(c->wsi);
}

/* bt_chat_submit_fn: a chat task for the workers (conn_id 0: no HTTP
 * request waits for it). */
static bool chat_push(struct bt_server *s, bt_chat_task *t, uint64_t conn_id)
{
    struct job *j = bt_calloc(1, sizeof *j);
    j->kind = JOB_CHAT;
    j->conn_id = conn_id;
    j->task = t;
    if (job_push(s, j))
        return true;
    j->task = NULL; /* still the caller's */
    job_free(j);
    return false;
}

static bool chat_submit(void *host, bt_chat_task *t)
{
    return chat_push(host, t, 0);
}

static void drain_results(struct bt_server *s)
{
    pthread_mutex_lock(&s->mu);
    struct result *r = s->results_head;
    s->results_head = s->results_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    while (r) {
        struct result *next = r->next;
        struct conn *c = conn_find(s, r->conn_id);
        if (c) {
            bool signed_in = r->user != NULL; /* a hello that took */
            if (r->user) {
                free(c->user);
                free(c->role);
                c->user = r->user;
                c->role = r->role;
                r->user = r->role = NULL;
            }
            size_t i;
            json_t *m;
            json_array_foreach(r->messages, i, m) conn_send(c, json_incref(m));
            if (signed_in && c->is_ws)
                send_state(s, c);
        }
        size_t i;
        json_t *card;
        json_array_foreach(r->cards, i, card)
        {
            enum card_put put = cards_put(s, card);
            if (put != CARD_SAME)
                cards_dispatch(s, card);
            /* A new card was just posted by whoever made it; a changed one
             * is shown again wherever chat shows it. */
            if (put == CARD_CHANGED && s->chat)
                bt_chat_card(s->chat, card);
        }
        if (r->refresh)
            s->refresh_in_flight = false;
        if (r->change_refresh)
            s->change_refresh_in_flight = false;
        if (r->changed)
            changes_note(s, r->changed);
        if (r->changed || r->change_refresh)
            changes_flush(s);
        if (r->task) {
            if (r->conn_id && c && !c->is_ws)
                http_deferred(c, r->task);
            bt_chat_task_done(s->chat, r->task);
            r->task = NULL;
        }
        result_free(r);
        r = next;
    }
}

/* Per-user rate limit: a fixed one-minute window. */
static bool rate_ok(struct bt_server *s, const char *user)
{
    int64_t now = bt_mono_ms();
    struct rate *r = NULL;
    for (size_t i = 0; i < s->nrates; i++)
        if (strcmp(s->rates[i].user, user) == 0)
            r = &s->rates[i];
    if (!r) {
        if (s->nrates >= USERS_MAX)
            return true;
        r = &s->rates[s->nrates++];
        r->user = bt_strdup(user);
        r->window_start_ms = now;
    }
    if (now - r->window_start_ms >= 60000) {
        r->window_start_ms = now;
        r->count = 0;
    }
    return ++r->count <= s->rate_limit;
}

/* One complete client message. */
static void handle_frame(struct bt_server *s, struct conn *c, const char *data, size_t len)
{
    if (!bt_utf8_valid(data, len)) {
        conn_send(c, error_msg(s, NULL, "bad_utf8", "the message is not valid UTF-8"));
        return;
    }
    json_error_t jerr;
    json_t *msg = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(msg)) {
        json_decref(msg);
        conn_send(c, error_msg(s, NULL, "bad_json", "a message is one JSON object"));
        return;
    }
    json_t *id = json_object_get(msg, "id");
    const char *type = json_string_value(json_object_get(msg, "type"));
    static const char *const types[] = {"hello",   "say",     "decide", "cancel",
                                        "history", "pending", "audit"};
    /* Fields each type needs (NULL: none). */
    static const char *const needs[][3] = {
        {"token", NULL, NULL},     {"text", NULL, NULL}, {"approval", "decision", NULL},
        {"approval", NULL, NULL},  {NULL, NULL, NULL},   {NULL, NULL, NULL},
        {"request_id", NULL, NULL}};
    size_t t = 0;
    for (; type && t < sizeof types / sizeof types[0]; t++)
        if (strcmp(type, types[t]) == 0)
            break;
    if (!type) {
        conn_send(c, error_msg(s, id, "missing_field", "the message has no `type`"));
    } else if (t == sizeof types / sizeof types[0]) {
        char m[160];
        bt_fmt(m, sizeof m, "unknown message type '%.64s'", type);
        conn_send(c, error_msg(s, id, "unknown_type", m));
    } else if (t != 0 && !c->user) {
        conn_send(c, error_msg(s, id, "unauthenticated", "send hello with a token first"));
    } else {
        const char *missing = NULL;
        for (int k = 0; k < 3 && needs[t][k] && !missing; k++)
            if (!field_str(msg, needs[t][k]))
                missing = needs[t][k];
        const char *decision = field_str(msg, "decision");
        json_t *step = json_object_get(msg, "step");
        if (missing) {
            char m[96];
            bt_fmt(m, sizeof m, "`%s` is required (a non-empty string)", missing);
            conn_send(c, error_msg(s, id, "missing_field", m));
        } else if (t == 2 && (strcmp(decision, "approve") != 0 && strcmp(decision, "deny") != 0)) {
            conn_send(c, error_msg(s, id, "missing_field", "`decision` is approve or deny"));
        } else if (t == 2 && step && !json_is_null(step) &&
                   (!json_is_integer(step) || json_integer_value(step) < 1 ||
                    json_integer_value(step) > 10000)) {
            conn_send(c, error_msg(s, id, "missing_field", "`step` is a number from 1"));
        } else if (t != 0 && !rate_ok(s, c->user)) {
            conn_send(c, error_msg(s, id, "rate_limited", "too many requests; wait a minute"));
        } else {
            struct job *j = bt_calloc(1, sizeof *j);
            j->kind = JOB_MESSAGE;
            j->conn_id = c->id;
            j->user = c->user ? bt_strdup(c->user) : NULL;
            j->msg = json_incref(msg);
            if (!job_push(s, j)) {
                job_free(j);
                conn_send(c, error_msg(s, id, "internal", "baton is busy; try again"));
            } else if (t == 2) {
                cards_watch(s, field_str(msg, "approval"));
            }
        }
    }
    json_decref(msg);
}

/* The Origin must be the server's own ("http://" + Host) or listed in
 * server.allowed_origins. A client that sends no Origin is not a browser
 * (browsers always send one on a WebSocket handshake) and is let through:
 * the token is what authenticates; the Origin check stops other web pages. */
static bool origin_ok(struct bt_server *s, struct lws *wsi)
{
    char origin[256], host[256], self[300];
    if (lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN) <= 0)
        return true;
    if (lws_hdr_copy(wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN) < 0)
        return false;
    size_t i;
    json_t *o;
    json_array_foreach(s->allowed_origins, i, o)
    {
        if (json_is_string(o) && strcmp(json_string_value(o), origin) == 0)
            return true;
    }
    if (lws_hdr_copy(wsi, host, sizeof host, WSI_TOKEN_HOST) > 0) {
        bt_fmt(self, sizeof self, "http://%s", host);
        if (strcmp(self, origin) == 0)
            return true;
    }
    return false;
}

/* Response headers every page gets: the console loads only its own files
 * and talks only to its own origin, and no other site may frame it. */
static int security_headers(struct lws *wsi, uint8_t **p, uint8_t *end)
{
    static const char *const h[][2] = {
        {"content-security-policy:",
         "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
         "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"},
        {"x-content-type-options:", "nosniff"},
        {"x-frame-options:", "DENY"},
        {"referrer-policy:", "no-referrer"},
        {"cache-control:", "no-cache"},
    };
    for (size_t i = 0; i < sizeof h / sizeof h[0]; i++)
        if (lws_add_http_header_by_name(wsi, (const unsigned char *)h[i][0],
                                        (const unsigned char *)h[i][1], (int)strlen(h[i][1]), p,
                                        end))
            return 1;
    return 0;
}

/* Answer with body (owned, text) or, when body is NULL, with the embedded
 * file data/len (static). */
static int http_send(struct lws *wsi, struct conn *c, unsigned int status, const char *ctype,
                     char *body, const unsigned char *data, size_t len)
{
    uint8_t buf[LWS_PRE + 1024], *start = &buf[LWS_PRE], *p = start, *end = &buf[sizeof buf - 1];
    c->http_body = body;
    c->http_static = body ? NULL : data;
    c->http_len = body ? strlen(body) : len;
    if (lws_add_http_common_headers(wsi, status, ctype, (lws_filepos_t)c->http_len, &p, end) ||
        security_headers(wsi, &p, end) || lws_finalize_write_http_header(wsi, start, &p, end))
        return 1;
    lws_callback_on_writable(wsi);
    return 0;
}

static int http_reply(struct lws *wsi, struct conn *c, unsigned int status, const char *ctype,
                      char *body)
{
    return http_send(wsi, c, status, ctype, body, NULL, 0);
}

static void conn_unlink(struct bt_server *s, struct conn *c)
{
    for (struct conn **pp = &s->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
}

static void conn_free(struct conn *c)
{
    bt_buf_free(&c->rx);
    free(c->user);
    free(c->role);
    json_decref(c->outq);
    json_decref(c->outq_keys);
    free(c->http_body);
    free(c);
}

/* /metrics: the counters plus the circuit breakers of the connectors the
 * workers share (a quick read under the breakers' own lock). */
static char *metrics_with_breakers(struct bt_server *s)
{
    struct gen *g = gen_acquire(s);
    json_t *breakers = bt_pipeline_breakers(g->p[0]);
    gen_release(s, g);
    char *text = metrics_text(&s->m, breakers);
    json_decref(breakers);
    if (!s->chat)
        return text;
    /* Team chat (loop thread, like this function). */
    bt_buf b = BT_BUF_INIT(0);
    bt_buf_puts(&b, text);
    free(text);
    bt_buf_puts(&b, "# HELP baton_chat_connected Whether baton is connected to the chat "
                    "platform.\n# TYPE baton_chat_connected gauge\n");
    json_t *st = bt_chat_status(s->chat);
    const char *name;
    json_t *v;
    json_object_foreach(st, name, v)
    {
        bt_buf_printf(&b, "baton_chat_connected{surface=\"%s\"} %d\n", name,
                      json_is_true(json_object_get(v, "connected")));
    }
    bt_buf_puts(&b, "# HELP baton_chat_reconnects_total Connections to the chat platform "
                    "lost and opened again.\n# TYPE baton_chat_reconnects_total counter\n");
    json_object_foreach(st, name, v)
    {
        bt_buf_printf(&b, "baton_chat_reconnects_total{surface=\"%s\"} %lld\n", name,
                      (long long)json_integer_value(json_object_get(v, "reconnects")));
    }
    json_decref(st);
    return bt_buf_steal(&b);
}

/* /healthz: 200 "ok", or 503 naming what is down and since when. */
static int healthz(struct bt_server *s, struct lws *wsi, struct conn *c)
{
    pthread_mutex_lock(&s->m.mu);
    int64_t down = s->m.store_down_ms;
    char *body = down ? bt_asprintf("store unavailable for %lld s: %s\n",
                                    (long long)((bt_wall_ms() - down) / 1000), s->m.store_error)
                      : bt_strdup("ok\n");
    pthread_mutex_unlock(&s->m.mu);
    return http_reply(wsi, c, down ? HTTP_STATUS_SERVICE_UNAVAILABLE : HTTP_STATUS_OK, "text/plain",
                      body);
}

/* A chat platform's callback has its whole body: chat makes a task of it,
 * and the answer goes out when a worker has run it (http_deferred). */
static int chat_http_body(struct bt_server *s, struct lws *wsi, struct conn *c)
{
    unsigned int status = HTTP_STATUS_OK;
    char *reply = NULL;
    if (c->rx_toobig)
        return http_reply(wsi, c, HTTP_STATUS_REQ_ENTITY_TOO_LARGE, "application/json",
                          bt_strdup("{\"error\":\"body too large\"}"));
    bt_chat_task *t = bt_chat_http_task(s->chat, c->http_uri, c->rx.data ? c->rx.data : "",
                                        c->rx.len, &status, &reply);
    if (!t)
        return http_reply(wsi, c, status, "application/json", reply ? reply : bt_strdup("{}"));
    free(reply);
    c->id = ++s->next_conn_id;
    c->wsi = wsi;
    c->last_rx_ms = bt_mono_ms();
    c->next = s->conns;
    s->conns = c;
    c->http_linked = true;
    if (!chat_push(s, t, c->id)) {
        bt_chat_task_done(s->chat, t);
        return http_reply(wsi, c, HTTP_STATUS_SERVICE_UNAVAILABLE, "application/json",
                          bt_strdup("{\"error\":\"baton is busy; try again\"}"));
    }
    return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    struct pss *pss = user;
    struct bt_server *s = lws_context_user(lws_get_context(wsi));
    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        if (s)
            drain_results(s);
        return 0;
    case LWS_CALLBACK_HTTP: {
        const char *uri = in;
        if (pss->c) { /* the previous request on a kept-alive connection */
            if (pss->c->http_linked)
                conn_unlink(s, pss->c);
            conn_free(pss->c);
        }
        pss->c = bt_calloc(1, sizeof *pss->c);
        if (s->chat && bt_chat_http_path(s->chat, uri)) {
            if (lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) <= 0)
                return http_reply(wsi, pss->c, HTTP_STATUS_METHOD_NOT_ALLOWED, "application/json",
                                  bt_strdup("{\"error\":\"POST only\"}"));
            pss->c->http_post = true;
            pss->c->rx.max = CHAT_BODY_MAX;
            bt_strlcpy(pss->c->http_uri, uri, sizeof pss->c->http_uri);
            return 0; /* the body follows */
        }
        if (strcmp(uri, "/healthz") == 0)
            return healthz(s, wsi, pss->c);
        if (strcmp(uri, "/metrics") == 0)
            return http_reply(wsi, pss->c, HTTP_STATUS_OK, "text/plain; version=0.0.4",
                              metrics_with_breakers(s));
        const struct bt_console_asset *a = bt_console_asset(uri);
        if (a)
            return http_send(wsi, pss->c, HTTP_STATUS_OK, a->mime, NULL, a->data, a->len);
        return http_reply(wsi, pss->c, HTTP_STATUS_NOT_FOUND, "text/plain",
                          bt_strdup("not found\n"));
    }
    case LWS_CALLBACK_HTTP_BODY:
        if (pss->c && pss->c->http_post && !pss->c->rx_toobig &&
            bt_buf_append(&pss->c->rx, in, len) != BT_OK)
            pss->c->rx_toobig = true;
        return 0;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        if (pss->c && pss->c->http_post)
            return chat_http_body(s, wsi, pss->c);
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    case LWS_CALLBACK_HTTP_WRITEABLE: {
        if (pss->c && pss->c->http_status) { /* a deferred answer: headers first */
            uint8_t hb[LWS_PRE + 1024], *start = &hb[LWS_PRE], *p = start,
                                        *end = &hb[sizeof hb - 1];
            if (lws_add_http_common_headers(wsi, pss->c->http_status, "application/json",
                                            (lws_filepos_t)pss->c->http_len, &p, end) ||
                security_headers(wsi, &p, end) ||
                lws_finalize_write_http_header(wsi, start, &p, end))
                return -1;
            pss->c->http_status = 0;
            lws_callback_on_writable(wsi);
            return 0;
        }
        if (!pss->c || (!pss->c->http_body && !pss->c->http_static))
            return -1;
        size_t n = pss->c->http_len;
        uint8_t *buf = bt_malloc(LWS_PRE + n + 1);
        memcpy(buf + LWS_PRE,
               pss->c->http_body ? (const void *)pss->c->http_body
                                 : (const void *)pss->c->http_static,
               n);
        int w = lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_HTTP_FINAL);
        free(buf);
        if (w < (int)n)
            return -1;
        return lws_http_transaction_completed(wsi) ? -1 : 0;
    }
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        if (pss && pss->c && !pss->c->is_ws) {
            if (pss->c->http_linked)
                conn_unlink(s, pss->c);
            conn_free(pss->c);
            pss->c = NULL;
        }
        return 0;
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        char uri[64];
        if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) <= 0 || strcmp(uri, "/ws") != 0)
            return -1;
        if (!origin_ok(s, wsi)) {
            bt_log(BT_LOG_WARN, "server", NULL, "WebSocket refused: Origin not allowed");
            return -1;
        }
        return 0;
    }
    case LWS_CALLBACK_ESTABLISHED: {
        if (pss->c) /* left over from the HTTP upgrade request */
            conn_free(pss->c);
        struct conn *c = bt_calloc(1, sizeof *c);
        c->id = ++s->next_conn_id;
        c->wsi = wsi;
        c->is_ws = true;
        c->rx.max = (size_t)s->max_frame;
        c->outq = json_array();
        c->outq_keys = json_array();
        c->last_rx_ms = bt_mono_ms();
        c->next = s->conns;
        s->conns = c;
        pss->c = c;
        pthread_mutex_lock(&s->m.mu);
        s->m.open_connections++;
        pthread_mutex_unlock(&s->m.mu);
        bt_log(BT_LOG_INFO, "server", NULL, "connection %llu opened", (unsigned long long)c->id);
        return 0;
    }
    case LWS_CALLBACK_RECEIVE: {
        struct conn *c = pss->c;
        if (!c)
            return -1;
        c->last_rx_ms = bt_mono_ms();
        if (!c->rx_toobig && bt_buf_append(&c->rx, in, len) != BT_OK) {
            c->rx_toobig = true;
            bt_buf_free(&c->rx);
            c->rx.max = (size_t)s->max_frame;
        }
        if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) != 0)
            return 0;
        if (c->rx_toobig) {
            char m[96];
            bt_fmt(m, sizeof m, "a message is at most %lld bytes", s->max_frame);
            conn_send(c, error_msg(s, NULL, "too_big", m));
        } else {
            handle_frame(s, c, c->rx.data ? c->rx.data : "", c->rx.len);
        }
        c->rx_toobig = false;
        bt_buf_free(&c->rx);
        c->rx.max = (size_t)s->max_frame;
        return 0;
    }
    case LWS_CALLBACK_SERVER_WRITEABLE: {
        struct conn *c = pss->c;
        if (!c || json_array_size(c->outq) == 0)
            return 0;
        const char *text = json_string_value(json_array_get(c->outq, 0));
        size_t n = strlen(text);
        uint8_t *buf = bt_malloc(LWS_PRE + n + 1);
        memcpy(buf + LWS_PRE, text, n);
        int w = lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_TEXT);
        free(buf);
        json_array_remove(c->outq, 0);
        json_array_remove(c->outq_keys, 0);
        c->outq_bytes -= n;
        if (w < (int)n)
            return -1;
        if (json_array_size(c->outq) > 0)
            lws_callback_on_writable(wsi);
        return 0;
    }
    case LWS_CALLBACK_CLOSED: {
        struct conn *c = pss->c;
        if (c) {
            bt_log(BT_LOG_INFO, "server", NULL, "connection %llu closed",
                   (unsigned long long)c->id);
            conn_unlink(s, c);
            conn_free(c);
            pss->c = NULL;
            pthread_mutex_lock(&s->m.mu);
            s->m.open_connections--;
            pthread_mutex_unlock(&s->m.mu);
        }
        return 0;
    }
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

/* ---- timers ------------------------------------------------------------------ */

static void on_sweep(lws_sorted_usec_list_t *sul)
{
    struct bt_server *s = lws_container_of(sul, struct bt_server, sweep_sul);
    struct job *j = bt_calloc(1, sizeof *j);
    j->kind = JOB_SWEEP;
    if (!job_push(s, j))
        job_free(j);
    lws_sul_schedule(s->ctx, 0, &s->sweep_sul, on_sweep, SWEEP_INTERVAL_US);
}

/* Close connections idle longer than idle_timeout_s; half-open ones are
 * found by the ping policy (retry_and_idle_policy). The tick also bounds
 * how long the loop sleeps, so the stop flag is seen quickly. */
static void on_tick(lws_sorted_usec_list_t *sul)
{
    struct bt_server *s = lws_container_of(sul, struct bt_server, tick_sul);
    int64_t now = bt_mono_ms();
    for (struct conn *c = s->conns; c; c = c->next)
        if (now - c->last_rx_ms > s->idle_timeout_s * 1000) {
            bt_log(BT_LOG_INFO, "server", NULL, "connection %llu idle; closing",
                   (unsigned long long)c->id);
            c->last_rx_ms = now; /* once */
            lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        }
    cards_maybe_refresh(s, now);
    changes_flush(s);
    if (s->chat)
        bt_chat_tick(s->chat, now);
    if (s->reload && *s->reload) {
        *s->reload = 0;
        bt_log(BT_LOG_INFO, "server", NULL, "SIGHUP: reloading the configuration");
        struct job *j = bt_calloc(1, sizeof *j);
        j->kind = JOB_RELOAD;
        if (!job_push(s, j)) {
            job_free(j);
            bt_log(BT_LOG_ERROR, "server", NULL, "reload not started: baton is busy");
        }
    }
    lws_sul_schedule(s->ctx, 0, &s->tick_sul, on_tick, TICK_US);
}

/* libwebsockets' own log lines go to the same sink as ours. */
static void lws_emit(int level, const char *line)
{
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    bt_log(level == LLL_ERR ? BT_LOG_ERROR : BT_LOG_WARN, "lws", NULL, "%.*s", (int)n, line);
}

/* ---- run ------------------------------------------------------------------------ */

/* Every connection is a descriptor; the usual soft limit of 1024 would cap
 * the console at about a thousand browsers, and past it accept() fails in
 * a loop. Raise the soft limit to 65536, or the hard limit if lower
 * (libwebsockets sizes its tables from it when the context is created). */
#define FD_LIMIT_WANT 65536
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = FD_LIMIT_WANT;
    if (rl.rlim_max != RLIM_INFINITY && want > rl.rlim_max)
        want = rl.rlim_max;
    if (rl.rlim_cur < want) {
        rlim_t before = rl.rlim_cur;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
            bt_log(BT_LOG_INFO, "server", NULL, "open files limit raised from %llu to %llu",
                   (unsigned long long)before, (unsigned long long)want);
    }
}

/* Change notifications need a store handle of their own for the listener
 * thread, opened from the location the pipelines use. SQLite has none
 * (bt_store_listen says so): there, decisions made by other processes show
 * through the 5 s refresh alone, as before. */
static void listener_open(struct bt_server *s, const bt_config *cfg)
{
    const char *loc = s->store_override ? s->store_override
                                        : json_string_value(bt_config_get(cfg, "store.location"));
    if (!loc)
        return; /* the pipelines' default, an SQLite file */
    char err[BT_ERRLEN];
    if (bt_store_open(loc, &s->listener, err, sizeof err) != BT_OK) {
        bt_log(BT_LOG_WARN, "server", NULL,
               "no change notifications: %s; changes made by other processes show within %d s", err,
               REFRESH_FULL_MS / 1000);
        return;
    }
    if (bt_store_listen(s->listener, err, sizeof err) != BT_OK) {
        bt_log(BT_LOG_INFO, "server", NULL,
               "no change notifications (%s): changes made by other processes show within %d s",
               err, REFRESH_FULL_MS / 1000);
        bt_store_close(s->listener);
        s->listener = NULL;
    }
}

enum bt_err bt_server_run(bt_config *cfg, const char *listen_override, const char *store_override,
                          volatile sig_atomic_t *stop, volatile sig_atomic_t *reload, char *err,
                          size_t errlen)
{
    struct bt_server *s = bt_calloc(1, sizeof *s);
    enum bt_err rc = BT_OK;
    s->stop = stop;
    const char *listen =
        listen_override ? listen_override : json_string_value(bt_config_get(cfg, "server.listen"));
    if (!parse_listen(listen ? listen : DEFAULT_LISTEN, s->host, sizeof s->host, &s->port)) {
        bt_fmt(err, errlen, "listen address '%s' is not ADDR:PORT", listen);
        free(s);
        return BT_EINVAL;
    }
    s->allowed_origins = bt_config_get(cfg, "server.allowed_origins");
    s->max_frame = cfg_int(cfg, "server.max_frame_bytes", 65536);
    s->rate_limit = cfg_int(cfg, "server.rate_limit", 60);
    s->idle_timeout_s = cfg_int(cfg, "server.idle_timeout_s", 300);
    s->nworkers = cfg_int(cfg, "server.workers", 4);
    s->nrunners = cfg_int(cfg, "server.job_runners", 1);
    s->nslots = (int)(s->nworkers + s->nrunners);
    s->store_override = store_override;
    s->reload = reload;
    pthread_cond_init(&s->runner_cv, NULL);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->m.mu, NULL);
    pthread_cond_init(&s->job_cv, NULL);
    pthread_cond_init(&s->done_cv, NULL);
    pthread_cond_init(&s->stop_cv, NULL);
    s->changed_ids = json_object();

    /* One pipeline (with its own store handle) per thread, built before
     * any thread starts so a configuration problem stops `serve` at once. */
    s->threads = bt_calloc((size_t)s->nslots, sizeof *s->threads);
    bt_diag *d = bt_diag_new();
    s->gen = gen_build(s, cfg, false, d);
    if (!s->gen) {
        bt_fmt(err, errlen, "cannot build a pipeline: %s",
               bt_diag_count(d) ? bt_diag_get(d, 0) : "unknown problem");
        rc = BT_ECONFIG;
    } else {
        s->gen->number = 1;
        s->m.generation = 1;
    }
    bt_diag_free(d);

    raise_fd_limit();
    lws_set_log_level(LLL_ERR | LLL_WARN, lws_emit);
    static const lws_retry_bo_t retry = {
        .secs_since_valid_ping = 30,
        .secs_since_valid_hangup = 60,
    };
    if (rc == BT_OK) {
        /* Before any worker starts: it initialises libcurl. */
        char cerr[BT_ERRLEN];
        enum bt_err ce = bt_chat_new(cfg, chat_submit, s, &s->chat, cerr, sizeof cerr);
        if (ce != BT_OK) {
            bt_fmt(err, errlen, "team chat: %s", cerr);
            rc = ce;
        }
    }
    const struct lws_protocols protocols[] = {
        {"baton", callback, sizeof(struct pss), 4096, 0, NULL, 0},
        bt_chat_protocol(),
        {NULL, NULL, 0, 0, 0, NULL, 0},
    };
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = s->port;
    info.iface = s->host;
    info.protocols = protocols;
    info.user = s;
    info.retry_and_idle_policy = &retry;
    /* TLS for the chat platforms' wss:// connections (client side only). */
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6 | LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    if (rc == BT_OK) {
        s->ctx = lws_create_context(&info);
        if (!s->ctx) {
            bt_fmt(err, errlen, "cannot listen on %s:%d", s->host, s->port);
            rc = BT_EIO;
        }
    }
    int started = 0;
    for (int i = 0; rc == BT_OK && i < s->nslots; i++) {
        struct worker_arg *wa = bt_malloc(sizeof *wa);
        wa->s = s;
        wa->index = i;
        pthread_mutex_lock(&s->mu);
        s->workers_alive++;
        pthread_mutex_unlock(&s->mu);
        if (pthread_create(&s->threads[i], NULL, i < s->nworkers ? worker_main : runner_main, wa) !=
            0) {
            free(wa);
            pthread_mutex_lock(&s->mu);
            s->workers_alive--;
            pthread_mutex_unlock(&s->mu);
            bt_fmt(err, errlen, "cannot start worker threads");
            rc = BT_EIO;
            break;
        }
        started++;
    }
    if (rc == BT_OK)
        listener_open(s, cfg);
    if (rc == BT_OK && s->listener) {
        pthread_mutex_lock(&s->mu);
        s->workers_alive++;
        pthread_mutex_unlock(&s->mu);
        if (pthread_create(&s->listener_thread, NULL, listener_main, s) != 0) {
            pthread_mutex_lock(&s->mu);
            s->workers_alive--;
            pthread_mutex_unlock(&s->mu);
            bt_log(BT_LOG_WARN, "server", NULL,
                   "cannot start the listener thread: no change notifications");
            bt_store_close(s->listener);
            s->listener = NULL;
        } else {
            bt_log(BT_LOG_INFO, "server", NULL,
                   "change notifications on: changes made by other processes show at once");
        }
    }
    if (rc == BT_OK) {
        bt_log(BT_LOG_INFO, "server", NULL,
               "listening on %s:%d with %lld workers and %lld job runners", s->host, s->port,
               s->nworkers, s->nrunners);
        lws_sul_schedule(s->ctx, 0, &s->sweep_sul, on_sweep, 1000);
        lws_sul_schedule(s->ctx, 0, &s->tick_sul, on_tick, TICK_US);
        if (s->chat)
            bt_chat_start(s->chat, s->ctx);
        while (!*stop && lws_service(s->ctx, 0) >= 0)
            ;
        bt_log(BT_LOG_INFO, "server", NULL, "stopping");
        if (s->chat)
            bt_chat_stop(s->chat);
    }

    /* Stop: no new jobs; workers finish the job in hand. Queued jobs that
     * no worker started are dropped (nothing of them was recorded). */
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_cond_broadcast(&s->job_cv);
    pthread_cond_broadcast(&s->runner_cv);
    pthread_cond_broadcast(&s->stop_cv);
    int64_t deadline = bt_mono_ms() + STOP_WAIT_MS;
    while (s->workers_alive > 0 && bt_mono_ms() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&s->done_cv, &s->mu, &ts);
    }
    bool all_done = s->workers_alive == 0;
    pthread_mutex_unlock(&s->mu);
    if (!all_done) {
        /* A worker is stuck in a connector call past every timeout; the
         * process is about to exit, so leave it rather than hang. */
        bt_log(BT_LOG_ERROR, "server", NULL, "workers did not finish within %d ms", STOP_WAIT_MS);
        return rc;
    }
    for (int i = 0; i < started; i++)
        pthread_join(s->threads[i], NULL);
    if (s->listener) {
        pthread_join(s->listener_thread, NULL);
        bt_store_close(s->listener);
    }
    if (s->ctx) {
        lws_sul_cancel(&s->sweep_sul);
        lws_sul_cancel(&s->tick_sul);
        lws_context_destroy(s->ctx);
    }
    while (s->jobs_head) {
        struct job *j = s->jobs_head;
        s->jobs_head = j->next;
        if (j->task)
            bt_chat_task_done(s->chat, j->task);
        job_free(j);
    }
    while (s->results_head) {
        struct result *r = s->results_head;
        s->results_head = r->next;
        if (r->task)
            bt_chat_task_done(s->chat, r->task);
        result_free(r);
    }
    while (s->conns) {
        struct conn *c = s->conns;
        s->conns = c->next;
        conn_free(c);
    }
    bt_chat_free(s->chat); /* after the context: its connections are closed */
    gen_free(s->gen);
    for (size_t i = 0; i < s->nretired; i++)
        gen_free(s->retired[i]);
    for (size_t i = 0; i < s->nrates; i++)
        free(s->rates[i].user);
    free(s->threads);
    metrics_free(&s->m);
    for (size_t i = 0; i < s->ncards; i++)
        card_entry_free(&s->cards[i]);
    free(s->cards);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->job_cv);
    pthread_cond_destroy(&s->done_cv);
    pthread_cond_destroy(&s->runner_cv);
    pthread_cond_destroy(&s->stop_cv);
    json_decref(s->changed_ids);
    free(s);
    return rc;
}
