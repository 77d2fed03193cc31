/*
 * `baton serve` end to end: the real binary on a free loopback port, a
 * hand-written RFC 6455 client (real handshake, masked frames) speaking the
 * console protocol, plain HTTP for /healthz and /metrics, and SIGTERM.
 * Every wait is bounded.
 */
#define WAIT_MS 20000

#include "harness.h"
#include "test.h"
#include "ws_client.h"

static char tmp[] = "/tmp/bt-serve-XXXXXX";
static char store[600];
static char config[600];
static int port;
static pid_t server;

/* ---- plumbing ------------------------------------------------------------- */

static int http_get(const char *path, char **body)
{
    return http_get_at(port, path, body);
}

static struct ws *ws_open(const char *origin)
{
    return ws_open_at(port, origin);
}

/* Next message whose string field key is value; others (notices, pushed
 * cards) are skipped. NULL, and a failed check, after WAIT_MS. */
static json_t *ws_next(struct ws *w, const char *key, const char *value)
{
    int64_t deadline = bt_mono_ms() + WAIT_MS;
    while (bt_mono_ms() < deadline) {
        json_t *m = ws_recv(w, (int)(deadline - bt_mono_ms()));
        if (!m)
            break;
        const char *v = json_string_value(json_object_get(m, key));
        if (v && strcmp(v, value) == 0)
            return m;
        char *dump = json_dumps(m, JSON_COMPACT);
        fprintf(stderr, "  (skipping %.300s while waiting for %s %s)\n", dump, key, value);
        free(dump);
        json_decref(m);
    }
    CHECK_MSG(0, "no message with %s %s", key, value);
    return NULL;
}

static json_t *ws_expect(struct ws *w, const char *type)
{
    return ws_next(w, "type", type);
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

/* Send text and expect an error with code; the connection then still
 * answers a `pending`. */
static void expect_error(struct ws *w, const char *text, size_t len, const char *code)
{
    CHECK(ws_send_frame(w, 1, true, text, len));
    json_t *e = ws_expect(w, "error");
    CHECK_STR(jstr(e, "code"), code);
    CHECK(*jstr(e, "message") != '\0');
    json_decref(e);
    CHECK(ws_send(w, "{\"type\":\"pending\",\"id\":\"after\"}"));
    json_t *p = ws_expect(w, "pending");
    CHECK_STR(jstr(p, "in_reply_to"), "after");
    json_decref(p);
}

static char *token_for(const char *user)
{
    struct out o =
        run_in(NULL, NULL,
               (const char *const[]){"--config", config, "--store", store, "token", user, NULL});
    CHECK_MSG(o.code == 0, "baton token %s: exit %d: %s", user, o.code, o.err);
    char *t = bt_strndup(o.out, strcspn(o.out, "\n"));
    CHECK(strncmp(t, "bt_", 3) == 0);
    out_free(&o);
    return t;
}

/* The answer to the message with id. */
static json_t *ws_answer(struct ws *w, const char *id)
{
    return ws_next(w, "in_reply_to", id);
}

/* Sign in; *state (when not NULL) gets the `state` replay that follows
 * `welcome`. */
static struct ws *signed_in_state(const char *token, const char *user, json_t **state)
{
    struct ws *w = ws_open(NULL);
    CHECK(w != NULL);
    if (!w)
        return NULL;
    char hello[200];
    bt_fmt(hello, sizeof hello, "{\"type\":\"hello\",\"id\":\"h\",\"token\":\"%s\"}", token);
    CHECK(ws_send(w, hello));
    json_t *m = ws_expect(w, "welcome");
    CHECK_STR(jstr(m, "user"), user);
    json_decref(m);
    m = ws_expect(w, "state");
    CHECK(json_is_array(json_object_get(m, "cards")));
    if (state)
        *state = m;
    else
        json_decref(m);
    return w;
}

static struct ws *signed_in(const char *token, const char *user)
{
    return signed_in_state(token, user, NULL);
}

/* ---- tests ------------------------------------------------------------------ */

static char *alice_token, *bob_token, *carol_token;

static void test_http(void)
{
    char *body;
    CHECK_INT(http_get("/healthz", &body), 200);
    free(body);
    CHECK_INT(http_get("/metrics", &body), 200);
    static const char *const names[] = {
        "baton_requests_total",         "baton_executions_total",
        "baton_protocol_errors_total",  "baton_message_duration_seconds",
        "baton_stage_duration_seconds", "baton_pending_approvals",
        "baton_open_connections"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        CHECK_MSG(body && strstr(body, names[i]), "metrics lack %s", names[i]);
    /* one breaker per connector for the whole process, all closed */
    CHECK_MSG(body && strstr(body, "baton_connector_circuit_state{connector=\"local\","
                                   "state=\"closed\"} 1\n"),
              "%s", body ? body : "");
    CHECK_MSG(body && strstr(body, "baton_connector_circuit_state{connector=\"inventory\","
                                   "state=\"open\"} 0\n"),
              "%s", body ? body : "");
    CHECK(body && strstr(body, "baton_connector_circuit_opened_total{connector=\"local\"} 0"));
    free(body);
    CHECK_INT(http_get("/nothing-here", &body), 404);
    free(body);
    /* The console: its files come from the binary, nothing else does. */
    CHECK_INT(http_get("/", &body), 200);
    CHECK(body && strstr(body, "<html"));
    free(body);
    CHECK_INT(http_get("/console.js", &body), 200);
    free(body);
    static const char *const outside[] = {"/../CMakeLists.txt", "/console.h",
                                          "/embed.cmake",       "/index.html/../../bot/server.c",
                                          "/%2e%2e/Makefile",   "//etc/passwd"};
    for (size_t i = 0; i < sizeof outside / sizeof outside[0]; i++) {
        int status = http_get(outside[i], &body);
        CHECK_MSG(status >= 400 && status < 500, "%s: status %d", outside[i], status);
        CHECK_MSG(body && !strstr(body, "cmake") && !strstr(body, "root:"), "%s served: %.80s",
                  outside[i], body ? body : "");
        free(body);
    }
}

/* After requests: each pipeline stage and message type has a histogram. */
static void test_stage_metrics(void)
{
    char *body;
    CHECK_INT(http_get("/metrics", &body), 200);
    static const char *const series[] = {
        "baton_stage_duration_seconds_count{stage=\"classify\"}",
        "baton_stage_duration_seconds_count{stage=\"select\"}",
        "baton_stage_duration_seconds_count{stage=\"plan\"}",
        "baton_stage_duration_seconds_count{stage=\"answer\"}",
        "baton_stage_duration_seconds_count{stage=\"execute\"}",
        "baton_message_duration_seconds_count{type=\"say\"}",
        "baton_message_duration_seconds_count{type=\"decide\"}",
        "baton_stage_duration_seconds_bucket{stage=\"classify\",le=\"0.0001\"}"};
    for (size_t i = 0; i < sizeof series / sizeof series[0]; i++)
        CHECK_MSG(body && strstr(body, series[i]), "metrics lack %s", series[i]);
    free(body);
}

static void test_sign_in(void)
{
    struct ws *w = ws_open(NULL);
    CHECK(w != NULL);
    if (!w)
        return;
    CHECK(ws_send(w, "{\"type\":\"say\",\"id\":\"1\",\"text\":\"how many assets do we have?\"}"));
    json_t *e = ws_expect(w, "error");
    CHECK_STR(jstr(e, "code"), "unauthenticated");
    CHECK_STR(jstr(e, "in_reply_to"), "1");
    json_decref(e);
    CHECK(ws_send(w, "{\"type\":\"hello\",\"id\":\"2\",\"token\":\"bt_not-a-token\"}"));
    e = ws_expect(w, "error");
    CHECK_STR(jstr(e, "code"), "bad_token");
    json_decref(e);
    CHECK(ws_send(w, "{\"type\":\"hello\",\"id\":\"3\"}"));
    e = ws_expect(w, "error");
    CHECK_STR(jstr(e, "code"), "missing_field");
    json_decref(e);
    char hello[200];
    bt_fmt(hello, sizeof hello, "{\"type\":\"hello\",\"id\":\"4\",\"token\":\"%s\"}", alice_token);
    CHECK(ws_send(w, hello));
    json_t *m = ws_expect(w, "welcome");
    CHECK_STR(jstr(m, "user"), "alice");
    CHECK_STR(jstr(m, "role"), "operator");
    CHECK_STR(jstr(m, "in_reply_to"), "4");
    json_decref(m);
    ws_close(w);
}

/* alice (requester) and bob (approver) signed in; false (both closed) when
 * either could not be. */
static bool alice_and_bob(struct ws **a, struct ws **b)
{
    *a = signed_in(alice_token, "alice");
    *b = signed_in(bob_token, "bob");
    if (*a && *b)
        return true;
    ws_close(*a);
    ws_close(*b);
    return false;
}

static void test_requests_and_approvals(void)
{
    struct ws *a, *b;
    if (!alice_and_bob(&a, &b))
        return;
    CHECK(ws_send(a, "{\"type\":\"say\",\"id\":\"q1\",\"text\":\"how many assets do we have?\"}"));
    json_t *r = ws_expect(a, "reply");
    CHECK_STR(jstr(r, "in_reply_to"), "q1");
    CHECK_STR(jstr(r, "kind"), "answer");
    CHECK_MSG(strstr(jstr(r, "text"), "24 assets"), "text: %s", jstr(r, "text"));
    CHECK(json_is_object(json_object_get(r, "data")));
    json_decref(r);

    CHECK(ws_send(a, "{\"type\":\"say\",\"id\":\"q2\",\"text\":\"restart nginx on web-01\"}"));
    r = ws_expect(a, "plan");
    CHECK_STR(jstr(r, "in_reply_to"), "q2");
    CHECK(json_is_object(json_object_get(r, "plan")));
    CHECK(json_is_object(json_object_get(r, "approval")));
    json_decref(r);

    CHECK(ws_send(
        a, "{\"type\":\"say\",\"id\":\"q3\",\"text\":\"deploy billing-api 1.2.3 to production\"}"));
    r = ws_expect(a, "plan");
    char *approval = bt_strdup(jstr(r, "approval_id"));
    CHECK(*approval);
    json_decref(r);

    /* bob sees it waiting, then approves it from his own connection. */
    CHECK(ws_send(b, "{\"type\":\"pending\",\"id\":\"p1\"}"));
    r = ws_expect(b, "pending");
    CHECK(json_is_array(json_object_get(r, "approvals")));
    bool seen = false;
    size_t i;
    json_t *ap;
    json_array_foreach(json_object_get(r, "approvals"), i, ap)
    {
        char *dump = json_dumps(ap, JSON_COMPACT);
        if (dump && strstr(dump, approval))
            seen = true;
        free(dump);
    }
    CHECK_MSG(seen, "approval %s not pending", approval);
    json_decref(r);

    char msg[300];
    bt_fmt(msg, sizeof msg,
           "{\"type\":\"decide\",\"id\":\"d1\",\"approval\":\"%s\",\"decision\":\"approve\"}",
           approval);
    CHECK(ws_send(b, msg));
    r = ws_answer(b, "d1");
    CHECK(r != NULL);
    const char *t = jstr(r, "type");
    CHECK_MSG(strcmp(t, "reply") == 0 || strcmp(t, "result") == 0, "decide answered %s", t);
    CHECK_STR(jstr(r, "in_reply_to"), "d1");
    CHECK_STR(jstr(json_object_get(r, "data"), "status"), "recorded");
    json_decref(r);

    /* alice cannot decide on her own level-2 plan: the pipeline refuses,
     * the protocol carries it as a reply. */
    bt_fmt(msg, sizeof msg, "{\"type\":\"cancel\",\"id\":\"c1\",\"approval\":\"%s\"}", approval);
    CHECK(ws_send(a, msg));
    r = ws_answer(a, "c1");
    CHECK(r != NULL);
    json_decref(r);

    CHECK(ws_send(a, "{\"type\":\"history\",\"id\":\"h1\"}"));
    r = ws_expect(a, "history");
    CHECK_STR(jstr(r, "in_reply_to"), "h1");
    CHECK(json_array_size(json_object_get(r, "requests")) >= 3);
    json_decref(r);
    free(approval);
    ws_close(a);
    ws_close(b);
}

/* The card of approval aid in a state replay, or NULL (borrowed). */
static json_t *card_in(json_t *state, const char *aid)
{
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(state, "cards"), i, c)
    {
        if (strcmp(jstr(c, "approval_id"), aid) == 0)
            return c;
    }
    return NULL;
}

static bool you(const json_t *card, const char *what)
{
    return json_is_true(json_object_get(json_object_get(card, "you"), what));
}

/* Cards: the plan reply carries one; approvers get it pushed; the approval
 * and the execution's progress are pushed live to the requester and the
 * approvers (never to a viewer); a new connection gets the current state
 * replayed; the audit trail of the request is there for its requester. */
static void test_cards_live(void)
{
    struct ws *a, *b;
    if (!alice_and_bob(&a, &b))
        return;
    CHECK(ws_send(a, "{\"type\":\"say\",\"id\":\"k1\",\"text\":\"restart nginx on localhost\"}"));
    json_t *r = ws_expect(a, "plan");
    json_t *card = json_object_get(r, "card");
    char *aid = bt_strdup(jstr(r, "approval_id"));
    char *rid = bt_strdup(jstr(card, "request_id"));
    CHECK_STR(jstr(card, "approval_id"), aid);
    CHECK_STR(jstr(card, "state"), "pending");
    CHECK_STR(jstr(card, "level_name"), "confirm");
    CHECK_STR(jstr(card, "request"), "restart nginx on localhost");
    CHECK_STR(jstr(card, "requester"), "alice");
    CHECK(you(card, "may_decide"));
    CHECK(you(card, "may_cancel"));
    json_t *step = json_array_get(json_object_get(card, "steps"), 0);
    CHECK_INT(json_integer_value(json_object_get(step, "number")), 1);
    CHECK_STR(jstr(step, "target"), "localhost");
    CHECK_STR(jstr(step, "state"), "pending");
    json_decref(r);

    /* bob, an approver, is shown the card at once (cards of earlier
     * tests' approvals may come first). */
    r = NULL;
    for (int k = 0; k < 50; k++) {
        r = ws_expect(b, "card");
        if (!r || strcmp(jstr(json_object_get(r, "card"), "approval_id"), aid) == 0)
            break;
        json_decref(r);
        r = NULL;
    }
    card = json_object_get(r, "card");
    CHECK_STR(jstr(card, "approval_id"), aid);
    CHECK(you(card, "may_decide"));
    CHECK(!you(card, "may_cancel"));
    json_decref(r);

    /* dave, a viewer, sees nothing of it. */
    char *dave_token = token_for("dave");
    json_t *st = NULL;
    struct ws *d = signed_in_state(dave_token, "dave", &st);
    CHECK(card_in(st, aid) == NULL);
    json_decref(st);

    char msg[300];
    bt_fmt(msg, sizeof msg,
           "{\"type\":\"decide\",\"id\":\"k2\",\"approval\":\"%s\",\"decision\":\"approve\"}", aid);
    CHECK(ws_send(a, msg));
    /* bob watches: the approval, the step running (the tool sleeps 1 s),
     * then completed with its result. */
    bool saw_running = false, saw_done = false;
    int64_t deadline = bt_mono_ms() + WAIT_MS;
    while (!saw_done && bt_mono_ms() < deadline) {
        r = ws_recv(b, (int)(deadline - bt_mono_ms()));
        if (!r)
            break;
        card = json_object_get(r, "card");
        if (strcmp(jstr(r, "type"), "card") == 0 && strcmp(jstr(card, "approval_id"), aid) == 0) {
            const json_t *x = json_object_get(card, "execution");
            const char *s0 = jstr(json_array_get(json_object_get(card, "steps"), 0), "state");
            if (strcmp(s0, "running") == 0)
                saw_running = true;
            if (strcmp(jstr(x, "state"), "completed") == 0) {
                saw_done = true;
                CHECK_STR(jstr(card, "state"), "approved");
                CHECK_INT(json_integer_value(json_object_get(x, "done")), 1);
                CHECK_INT(json_integer_value(json_object_get(x, "total")), 1);
                CHECK_STR(s0, "completed");
                CHECK(*jstr(card, "result_text"));
                CHECK(!you(card, "may_decide"));
                CHECK_STR(
                    json_string_value(json_array_get(json_object_get(card, "approved_by"), 0)),
                    "alice");
            }
        }
        json_decref(r);
    }
    CHECK_MSG(saw_running, "no card showed the step running");
    CHECK_MSG(saw_done, "no card showed the execution completed");
    r = ws_answer(a, "k2");
    CHECK_STR(jstr(r, "type"), "result");
    json_decref(r);

    /* A new connection (a reconnect) gets the card as it is now. */
    st = NULL;
    struct ws *c = signed_in_state(carol_token, "carol", &st);
    card = card_in(st, aid);
    CHECK_MSG(card != NULL, "card %s not replayed", aid);
    CHECK_STR(jstr(json_object_get(card, "execution"), "state"), "completed");
    json_decref(st);

    /* The audit trail: the requester sees it, a viewer does not. */
    bt_fmt(msg, sizeof msg, "{\"type\":\"audit\",\"id\":\"k3\",\"request_id\":\"%s\"}", rid);
    CHECK(ws_send(a, msg));
    r = ws_answer(a, "k3");
    CHECK_STR(jstr(r, "type"), "audit");
    CHECK_STR(jstr(r, "request_id"), rid);
    json_t *entries = json_object_get(r, "entries");
    CHECK_MSG(json_array_size(entries) >= 3, "%zu audit entries", json_array_size(entries));
    bool approved = false;
    size_t i;
    json_t *en;
    json_array_foreach(entries, i, en)
    {
        if (strstr(jstr(en, "action"), "approv"))
            approved = true;
    }
    CHECK_MSG(approved, "the audit trail has no approval entry");
    json_decref(r);
    if (d) {
        bt_fmt(msg, sizeof msg, "{\"type\":\"audit\",\"id\":\"k4\",\"request_id\":\"%s\"}", rid);
        CHECK(ws_send(d, msg));
        r = ws_answer(d, "k4");
        CHECK_STR(jstr(r, "code"), "forbidden");
        json_decref(r);
    }
    CHECK(ws_send(a, "{\"type\":\"audit\",\"id\":\"k5\",\"request_id\":\"nope\"}"));
    r = ws_answer(a, "k5");
    CHECK_STR(jstr(r, "code"), "not_found");
    json_decref(r);
    CHECK(ws_send(a, "{\"type\":\"audit\",\"id\":\"k6\"}"));
    r = ws_answer(a, "k6");
    CHECK_STR(jstr(r, "code"), "missing_field");
    json_decref(r);

    free(aid);
    free(rid);
    free(dave_token);
    ws_close(a);
    ws_close(b);
    ws_close(c);
    ws_close(d);
}

/* A level-2 plan estimated past background_after_s goes to the job queue;
 * the server's own job runner runs it and the card shows it completed. */
static void test_background_job(void)
{
    struct ws *a, *b;
    if (!alice_and_bob(&a, &b))
        return;
    CHECK(ws_send(
        a, "{\"type\":\"say\",\"id\":\"g1\",\"text\":\"deploy billing-api 1.2.3 on localhost\"}"));
    json_t *r = ws_expect(a, "plan");
    char *aid = bt_strdup(jstr(r, "approval_id"));
    CHECK(!you(json_object_get(r, "card"), "may_decide")); /* level 2: not the requester */
    json_decref(r);
    char msg[300];
    bt_fmt(msg, sizeof msg,
           "{\"type\":\"decide\",\"id\":\"g2\",\"approval\":\"%s\",\"decision\":\"approve\"}", aid);
    CHECK(ws_send(b, msg));
    r = ws_answer(b, "g2");
    CHECK_MSG(strstr(jstr(r, "text"), "background") != NULL, "decide: %s", jstr(r, "text"));
    json_decref(r);
    bool done = false;
    int64_t deadline = bt_mono_ms() + WAIT_MS;
    while (!done && bt_mono_ms() < deadline) {
        r = ws_recv(a, (int)(deadline - bt_mono_ms()));
        if (!r)
            break;
        json_t *card = json_object_get(r, "card");
        if (strcmp(jstr(r, "type"), "card") == 0 && strcmp(jstr(card, "approval_id"), aid) == 0 &&
            strcmp(jstr(json_object_get(card, "execution"), "state"), "completed") == 0)
            done = true;
        json_decref(r);
    }
    CHECK_MSG(done, "the background execution of %s did not complete", aid);
    free(aid);
    ws_close(a);
    ws_close(b);
}

/* Poll /metrics until it holds line (bounded). */
static bool metrics_show(const char *line)
{
    int64_t deadline = bt_mono_ms() + WAIT_MS;
    while (bt_mono_ms() < deadline) {
        char *body;
        bool seen = http_get("/metrics", &body) == 200 && body && strstr(body, line);
        free(body);
        if (seen)
            return true;
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
    }
    return false;
}

static void expect_assets(struct ws *w, const char *id, const char *count)
{
    char msg[200];
    bt_fmt(msg, sizeof msg,
           "{\"type\":\"say\",\"id\":\"%s\",\"text\":\"how many assets do we have?\"}", id);
    CHECK(ws_send(w, msg));
    json_t *r = ws_answer(w, id);
    CHECK_MSG(strstr(jstr(r, "text"), count) != NULL, "%s: %s", count, jstr(r, "text"));
    json_decref(r);
}

/* SIGHUP: a changed inventory is used without dropping the connection; a
 * broken file keeps the configuration in use and the log says why. */
static void test_reload(void)
{
    struct ws *a = signed_in(alice_token, "alice");
    if (!a)
        return;
    expect_assets(a, "r1", "24 assets");
    char path[700];
    bt_fmt(path, sizeof path, "%s/inventory.yaml", cfgdir);
    char *inv = slurp(path);
    char *more = bt_asprintf("%s\n  - name: reload-01\n    hostname: reload-01\n    ip: 10.9.9.9\n"
                             "    os: linux\n    os_version: 'Debian 12'\n    role: web\n"
                             "    environment: dev\n    status: active\n    datacenter: hq\n"
                             "    tags: []\n    cpu: 2\n    ram_gb: 4\n    connection: ssh\n"
                             "    services: [nginx]\n    description: added by a reload\n",
                             inv ? inv : "");
    spit(path, more);
    free(more);
    kill(server, SIGHUP);
    CHECK_MSG(metrics_show("baton_config_generation 2\n"), "no reload seen in /metrics");
    expect_assets(a, "r2", "25 assets");

    bt_fmt(path, sizeof path, "%s/tools.yaml", cfgdir);
    char *tools = slurp(path);
    spit(path, "tools: [unclosed\n");
    kill(server, SIGHUP);
    CHECK_MSG(metrics_show("baton_config_reloads_total{result=\"failed\"} 1\n"),
              "no failed reload seen in /metrics");
    CHECK(metrics_show("baton_config_generation 2\n"));
    expect_assets(a, "r3", "25 assets");
    spit(path, tools ? tools : "");
    free(tools);
    bt_fmt(path, sizeof path, "%s/inventory.yaml", cfgdir);
    spit(path, inv ? inv : "");
    free(inv);
    kill(server, SIGHUP);
    CHECK(metrics_show("baton_config_generation 3\n"));
    ws_close(a);
}

static void test_protocol_errors(void)
{
    struct ws *w = signed_in(alice_token, "alice");
    if (!w)
        return;
    expect_error(w, "{not json", 9, "bad_json");
    expect_error(w, "[1,2]", 5, "bad_json");
    expect_error(w, "{\"type\":\"say\",\"text\":\"\xff\xfe\"}", 25, "bad_utf8");
    expect_error(w, "{\"type\":\"dance\",\"id\":\"x\"}", 25, "unknown_type");
    expect_error(w, "{\"type\":\"say\",\"id\":\"x\"}", 23, "missing_field");
    expect_error(w, "{\"id\":\"x\"}", 10, "missing_field");
    /* Over max_frame_bytes (65536), in one frame and in fragments. */
    size_t n = 70000;
    char *big = bt_malloc(n);
    memset(big, 'a', n);
    expect_error(w, big, n, "too_big");
    CHECK(ws_send_frame(w, 1, false, big, 40000));
    CHECK(ws_send_frame(w, 0, true, big, 40000));
    json_t *e = ws_expect(w, "error");
    CHECK_STR(jstr(e, "code"), "too_big");
    json_decref(e);
    free(big);
    /* A message in two fragments that fits is put back together. */
    const char *m = "{\"type\":\"pending\",\"id\":\"frag\"}";
    CHECK(ws_send_frame(w, 1, false, m, 10));
    CHECK(ws_send_frame(w, 0, true, m + 10, strlen(m) - 10));
    json_t *p = ws_expect(w, "pending");
    CHECK_STR(jstr(p, "in_reply_to"), "frag");
    json_decref(p);
    ws_close(w);
}

static void test_rate_limit(void)
{
    struct ws *w = signed_in(carol_token, "carol");
    if (!w)
        return;
    /* rate_limit is 60 per user per minute in the shipped configuration. */
    int limited = 0, answered = 0;
    for (int i = 0; i < 61; i++)
        CHECK(ws_send(w, "{\"type\":\"pending\",\"id\":\"r\"}"));
    /* cards pushed meanwhile are not counted */
    for (int i = 0; i < 61 + 50 && answered + limited < 61; i++) {
        json_t *m = ws_recv(w, WAIT_MS);
        if (!m)
            break;
        if (strcmp(jstr(m, "type"), "error") == 0 && strcmp(jstr(m, "code"), "rate_limited") == 0)
            limited++;
        else if (strcmp(jstr(m, "type"), "pending") == 0)
            answered++;
        json_decref(m);
    }
    CHECK_INT(answered, 60);
    CHECK_INT(limited, 1);
    ws_close(w);
}

static void test_origin(void)
{
    char own[64];
    bt_fmt(own, sizeof own, "http://127.0.0.1:%d", port);
    struct ws *w = ws_open(own);
    CHECK_MSG(w != NULL, "own origin refused");
    ws_close(w);
    w = ws_open("http://evil.example");
    CHECK_MSG(w == NULL, "foreign origin accepted");
    ws_close(w);
}

static void test_sigterm(void)
{
    struct ws *w = signed_in(alice_token, "alice");
    CHECK(kill(server, SIGTERM) == 0);
    int status = -1;
    int64_t deadline = bt_mono_ms() + WAIT_MS;
    pid_t got = 0;
    while ((got = waitpid(server, &status, WNOHANG)) == 0 && bt_mono_ms() < deadline) {
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
    }
    if (got == 0) {
        kill(server, SIGKILL);
        waitpid(server, &status, 0);
    }
    CHECK_MSG(got == server, "baton serve did not stop within %d ms", WAIT_MS);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
    server = 0;
    ws_close(w);
}

/* Start baton serve with the configuration in dir, stderr into log; wait
 * (bounded) until /healthz answers. */
static bool start_server(const char *dir, const char *log)
{
    char listen[64];
    bt_fmt(listen, sizeof listen, "127.0.0.1:%d", port);
    server = fork();
    if (server == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(fd, 2);
        execl(BATON_BIN, BATON_BIN, "--config", dir, "--store", store, "serve", "--listen", listen,
              (char *)NULL);
        _exit(127);
    }
    int64_t deadline = bt_mono_ms() + WAIT_MS;
    bool up = false;
    while (!up && bt_mono_ms() < deadline) {
        char *body;
        up = http_get("/healthz", &body) == 200;
        free(body);
        if (!up) {
            struct timespec ts = {0, 100000000};
            nanosleep(&ts, NULL);
        }
    }
    CHECK_MSG(up, "baton serve did not come up on %s", listen);
    return up;
}

/* A connection that says nothing for idle_timeout_s is closed (a second
 * server whose configuration sets the minimum, 10 s). */
static void test_idle_timeout(void)
{
    struct ws *w = signed_in(alice_token, "alice");
    if (!w)
        return;
    int64_t t0 = bt_mono_ms();
    /* Cards the server pushes (approvals waiting from earlier tests) are
     * not the client speaking: they do not keep the connection open. */
    json_t *m;
    while ((m = ws_recv(w, (int)(t0 + 16000 - bt_mono_ms()))) != NULL) {
        CHECK_STR(jstr(m, "type"), "card");
        json_decref(m);
    }
    int64_t waited = bt_mono_ms() - t0;
    CHECK_MSG(waited >= 9000 && waited < 15500, "closed after %lld ms", (long long)waited);
    /* closed, not timed out: a read now sees end of stream at once */
    char c;
    CHECK(recv(w->fd, &c, 1, MSG_DONTWAIT) == 0);
    ws_close(w);
}

static void stop_server(void)
{
    if (server > 0) {
        kill(server, SIGTERM);
        int64_t deadline = bt_mono_ms() + WAIT_MS;
        while (waitpid(server, NULL, WNOHANG) == 0 && bt_mono_ms() < deadline) {
            struct timespec ts = {0, 50000000};
            nanosleep(&ts, NULL);
        }
        kill(server, SIGKILL);
        waitpid(server, NULL, 0);
        server = 0;
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    CHECK(mkdtemp(tmp) != NULL);
    bt_fmt(store, sizeof store, "%s/baton.db", tmp);
    bt_fmt(config, sizeof config, "%s/config", BT_SOURCE_DIR);
    port = free_port();
    CHECK(port > 0);
    alice_token = token_for("alice");
    bob_token = token_for("bob");
    carol_token = token_for("carol");
    struct out o = run_in(
        NULL, NULL,
        (const char *const[]){"--config", config, "--store", store, "token", "mallory", NULL});
    CHECK_INT(o.code, 7);
    out_free(&o);

    /* The shipped configuration, with restarts that really run on
     * localhost and take a second. */
    static const char *const slow_restart[] = {
        "command: [systemctl, restart, '{service}']",
        "command: [sleep, '1']",
        "command: [systemctl, status, --no-pager, --lines=5, '{service}']",
        "command: ['true']",
        "command: [apt-get, install, -y, --allow-downgrades, '{app}={version}']",
        "command: ['true']",
        NULL,
        NULL};
    CHECK(make_config_with(tmp, slow_restart));
    char log[700];
    bt_fmt(log, sizeof log, "%s/serve.log", tmp);
    bool up = start_server(cfgdir, log);
    if (up) {
        RUN(test_http);
        RUN(test_sign_in);
        RUN(test_requests_and_approvals);
        RUN(test_cards_live);
        RUN(test_stage_metrics);
        RUN(test_background_job);
        RUN(test_reload);
        RUN(test_protocol_errors);
        RUN(test_rate_limit);
        RUN(test_origin);
        RUN(test_sigterm);
    }
    stop_server();
    /* A configuration with the shortest idle timeout. */
    char path[700];
    bt_fmt(path, sizeof path, "%s/baton.yaml", cfgdir);
    char *yaml = replace(slurp(path), "idle_timeout_s: 300", "idle_timeout_s: 10");
    CHECK(yaml && strstr(yaml, "idle_timeout_s: 10"));
    spit(path, yaml ? yaml : "");
    free(yaml);
    port = free_port();
    if (start_server(cfgdir, log))
        RUN(test_idle_timeout);
    stop_server();
    if (bt_test_failed) {
        char *text = slurp(log);
        fprintf(stderr, "--- serve log ---\n%s\n", text ? text : "");
        free(text);
    }
    free(alice_token);
    free(bob_token);
    free(carol_token);
    rm_tree(tmp);
    return bt_test_finish();
}
