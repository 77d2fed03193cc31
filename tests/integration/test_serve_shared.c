/*
 * Two `baton serve` processes on one store, as two hosts behind a load
 * balancer would run: alice is signed in on serve A, bob on serve B (the
 * real binary, a hand-written RFC 6455 client). alice asks for a change
 * that needs approval, bob approves it on B, and alice's connection on A
 * must be shown the changed card.
 *
 * test_serve_shared_pg (BATON_TEST_STORE: a PostgreSQL database, set by
 * tests/pg/pg_cluster.sh run): through LISTEN/NOTIFY, within a second of
 * bob's decision, three times in a row (the 5 s polling refresh, the
 * fallback, would make that a 1-in-125 chance), again after the listeners'
 * connections were killed, and both servers stop within about a second of
 * SIGTERM. test_serve_shared (no BATON_TEST_STORE: one SQLite file): no
 * change notifications, and the polling refresh still shows the decision
 * within its 5 s. Under valgrind (BATON_UNDER_VALGRIND) serve A runs under
 * valgrind as well and must exit 0 (no leak, no error), with longer waits.
 */
#include <libpq-fe.h>

#define WAIT_MS 20000

#include "harness.h"
#include "test.h"
#include "ws_client.h"
#define POLL_MS 7000 /* SQLite: the 5 s refresh, and some slack */

static char tmp[] = "/tmp/bt-shared-XXXXXX";
static char store[600];
static char config[600];
static bool pg;

struct server {
    const char *name;
    int port;
    pid_t pid;
    char log[700];
    bool valgrind; /* run under valgrind (the test is: BATON_UNDER_VALGRIND) */
};

static struct server srv_a = {"A", 0, 0, "", false}, srv_b = {"B", 0, 0, "", false};
/* Under valgrind serve A runs under valgrind too (its listener thread,
 * reconnect and stop must be clean), and every wait is longer: the latency
 * itself is checked by the ASan and plain builds. */
static int notify_ms = 1000; /* a decision made on B shows on A within this */
static int stop_ms = 3000;   /* SIGTERM to exit */

/* ---- plumbing ------------------------------------------------------------- */

/* GET /healthz: true on 200. */
static bool healthy(int port)
{
    char *body = NULL;
    int status = http_get_at(port, "/healthz", &body);
    free(body);
    return status == 200;
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

/* The next message of type before the deadline (others skipped), or NULL. */
static json_t *ws_expect(struct ws *w, const char *type, int64_t deadline)
{
    json_t *m;
    while ((m = ws_recv_until(w, deadline)) != NULL) {
        if (strcmp(jstr(m, "type"), type) == 0)
            return m;
        json_decref(m);
    }
    CHECK_MSG(0, "no %s message", type);
    return NULL;
}

/* A card of approval aid pushed to w that pass(card) accepts, before the
 * deadline; its time of arrival (monotonic ms) or -1. *last (when not
 * NULL) gets that card (new). */
static int64_t card_until(struct ws *w, const char *aid, bool (*pass)(const json_t *card),
                          int64_t deadline, json_t **last)
{
    json_t *m;
    while ((m = ws_recv_until(w, deadline)) != NULL) {
        json_t *card = json_object_get(m, "card");
        bool hit = strcmp(jstr(m, "type"), "card") == 0 &&
                   strcmp(jstr(card, "approval_id"), aid) == 0 && pass(card);
        if (hit && last)
            *last = json_incref(card);
        json_decref(m);
        if (hit)
            return bt_mono_ms();
    }
    return -1;
}

static bool any_card(const json_t *card)
{
    (void)card;
    return true;
}

/* bob's decision shows: approved, or the execution it released moving. */
static bool decided(const json_t *card)
{
    return strcmp(jstr(card, "state"), "pending") != 0;
}

static bool completed(const json_t *card)
{
    return strcmp(jstr(json_object_get(card, "execution"), "state"), "completed") == 0;
}

static char *token_for(const char *user)
{
    struct out o =
        run_in(NULL, NULL,
               (const char *const[]){"--config", config, "--store", store, "token", user, NULL});
    CHECK_MSG(o.code == 0, "baton token %s: exit %d: %s", user, o.code, o.err);
    char *t = bt_strndup(o.out, strcspn(o.out, "\n"));
    out_free(&o);
    return t;
}

static struct ws *sign_in(const struct server *sv, const char *token, const char *user)
{
    struct ws *w = ws_open_at(sv->port, NULL);
    CHECK_MSG(w != NULL, "no WebSocket to serve %s", sv->name);
    if (!w)
        return NULL;
    char hello[200];
    bt_fmt(hello, sizeof hello, "{\"type\":\"hello\",\"id\":\"h\",\"token\":\"%s\"}", token);
    CHECK(ws_send(w, hello));
    int64_t deadline = bt_mono_ms() + WAIT_MS;
    json_t *m = ws_expect(w, "welcome", deadline);
    CHECK_STR(jstr(m, "user"), user);
    json_decref(m);
    json_decref(ws_expect(w, "state", deadline));
    return w;
}

/* ---- the servers ------------------------------------------------------------ */

static bool start_server(struct server *sv)
{
    sv->port = free_port();
    bt_fmt(sv->log, sizeof sv->log, "%s/serve-%s.log", tmp, sv->name);
    char listen[64];
    bt_fmt(listen, sizeof listen, "127.0.0.1:%d", sv->port);
    sv->pid = fork();
    if (sv->pid == 0) {
        int fd = open(sv->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(fd, 2);
        if (sv->valgrind)
            execl("/usr/bin/valgrind", "valgrind", "--leak-check=full",
                  "--show-leak-kinds=definite,indirect",
                  "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99", "--quiet",
                  BATON_BIN, "--config", cfgdir, "--store", store, "serve", "--listen", listen,
                  (char *)NULL);
        else
            execl(BATON_BIN, BATON_BIN, "--config", cfgdir, "--store", store, "serve", "--listen",
                  listen, (char *)NULL);
        _exit(127);
    }
    int64_t deadline = bt_mono_ms() + (sv->valgrind ? 5 * WAIT_MS : WAIT_MS);
    bool up = false;
    while (!(up = healthy(sv->port)) && bt_mono_ms() < deadline)
        usleep(100000);
    CHECK_MSG(up, "serve %s did not come up on %s", sv->name, listen);
    return up;
}

/* SIGTERM; how long it took to exit (ms), or -1 (then it is killed). */
static long long stop_server(struct server *sv)
{
    if (sv->pid <= 0)
        return 0;
    int64_t t0 = bt_mono_ms();
    kill(sv->pid, SIGTERM);
    int status = -1;
    pid_t got = 0;
    while ((got = waitpid(sv->pid, &status, WNOHANG)) == 0 && bt_mono_ms() - t0 < WAIT_MS)
        usleep(20000);
    long long took = bt_mono_ms() - t0;
    if (got != sv->pid) {
        kill(sv->pid, SIGKILL);
        waitpid(sv->pid, NULL, 0);
        took = -1;
    } else {
        CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "serve %s: status %d", sv->name,
                  status);
    }
    sv->pid = 0;
    return took;
}

/* Wait (bounded) until the log of sv holds text. */
static bool log_shows(const struct server *sv, const char *text, int wait_ms)
{
    int64_t deadline = bt_mono_ms() + wait_ms;
    for (;;) {
        char *log = slurp(sv->log);
        bool seen = log && strstr(log, text);
        free(log);
        if (seen || bt_mono_ms() >= deadline)
            return seen;
        usleep(50000);
    }
}

/* ---- tests ------------------------------------------------------------------ */

static char *alice_token, *bob_token;

/* alice (on A) asks for a restart that needs approval; bob (on B) is shown
 * its card and approves it; alice is shown bob's decision within within_ms
 * of it, and then the execution completed. */
static void one_round(struct ws *a, struct ws *b, int round, int within_ms)
{
    char msg[300];
    bt_fmt(msg, sizeof msg,
           "{\"type\":\"say\",\"id\":\"s%d\",\"text\":\"restart nginx on localhost\"}", round);
    CHECK(ws_send(a, msg));
    json_t *plan = ws_expect(a, "plan", bt_mono_ms() + WAIT_MS);
    char *aid = bt_strdup(jstr(plan, "approval_id"));
    int64_t asked = bt_mono_ms();
    json_decref(plan);
    CHECK(*aid);

    /* bob, an approver on the other server, is shown the new card */
    int64_t shown = card_until(b, aid, any_card, bt_mono_ms() + WAIT_MS, NULL);
    CHECK_MSG(shown >= 0, "round %d: bob never saw card %s", round, aid);
    CHECK_MSG(shown - asked < within_ms, "round %d: bob saw card %s after %lld ms", round, aid,
              (long long)(shown - asked));

    bt_fmt(msg, sizeof msg,
           "{\"type\":\"decide\",\"id\":\"d%d\",\"approval\":\"%s\",\"decision\":\"approve\"}",
           round, aid);
    int64_t t0 = bt_mono_ms();
    CHECK(ws_send(b, msg));
    json_t *card = NULL;
    int64_t seen = card_until(a, aid, decided, bt_mono_ms() + WAIT_MS, &card);
    CHECK_MSG(seen >= 0, "round %d: alice never saw bob's decision on %s", round, aid);
    printf("round %d: bob's decision on B shown to alice on A after %lld ms\n", round,
           (long long)(seen - t0));
    CHECK_MSG(seen - t0 < within_ms, "round %d: alice saw bob's decision after %lld ms (want < %d)",
              round, (long long)(seen - t0), within_ms);
    /* and what it released, to the end (the restart takes a second; the
     * polling refresh may show the decision and the end at once) */
    CHECK_MSG((card && completed(card)) ||
                  card_until(a, aid, completed, bt_mono_ms() + WAIT_MS, NULL) >= 0,
              "round %d: alice never saw %s completed", round, aid);
    json_decref(card);
    /* bob's answer (the execution ran on B) */
    bt_fmt(msg, sizeof msg, "d%d", round);
    json_t *r;
    int64_t deadline = bt_mono_ms() + WAIT_MS;
    while ((r = ws_recv_until(b, deadline)) != NULL && strcmp(jstr(r, "in_reply_to"), msg) != 0)
        json_decref(r);
    CHECK_MSG(r != NULL, "round %d: bob got no answer", round);
    json_decref(r);
    free(aid);
}

/* Terminate the listening connections (both servers') from outside. */
static long long kill_listeners(void)
{
    PGconn *c = PQconnectdb(store);
    PGresult *r = PQexec(c, "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                            " AND application_name = 'baton' AND query LIKE 'LISTEN%'"
                            " AND pg_terminate_backend(pid)");
    long long n = PQresultStatus(r) == PGRES_TUPLES_OK ? PQntuples(r) : -1;
    PQclear(r);
    PQfinish(c);
    return n;
}

static void test_shared(void)
{
    struct ws *a = sign_in(&srv_a, alice_token, "alice");
    struct ws *b = sign_in(&srv_b, bob_token, "bob");
    if (!a || !b) {
        ws_close(a);
        ws_close(b);
        return;
    }
    if (pg) {
        CHECK_MSG(log_shows(&srv_a, "change notifications on", 0), "serve A does not listen");
        CHECK_MSG(log_shows(&srv_b, "change notifications on", 0), "serve B does not listen");
        for (int round = 1; round <= 3; round++)
            one_round(a, b, round, notify_ms);
        /* The listening connections are killed: each server connects again
         * (and refreshes every card), and notifications work again. */
        CHECK_INT(kill_listeners(), 2);
        CHECK_MSG(log_shows(&srv_a, "refreshing every card", 5000),
                  "serve A did not report its listener's new connection");
        CHECK(log_shows(&srv_b, "refreshing every card", 5000));
        one_round(a, b, 4, notify_ms);
    } else {
        CHECK_MSG(log_shows(&srv_a, "change notifications need PostgreSQL", 0),
                  "serve A does not say why it has no change notifications");
        CHECK(!log_shows(&srv_a, "change notifications on", 0));
        one_round(a, b, 1, POLL_MS);
    }
    ws_close(a);
    ws_close(b);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    CHECK(mkdtemp(tmp) != NULL);
    const char *url = getenv("BATON_TEST_STORE");
    pg = url && *url;
    if (pg)
        bt_strlcpy(store, url, sizeof store);
    else
        bt_fmt(store, sizeof store, "%s/baton.db", tmp);
    /* The shipped configuration, with restarts that really run on
     * localhost and take a second, and info log lines. */
    static const char *const slow_restart[] = {
        "command: [systemctl, restart, '{service}']",
        "command: [sleep, '1']",
        "command: [systemctl, status, --no-pager, --lines=5, '{service}']",
        "command: ['true']",
        NULL,
        NULL};
    CHECK(make_config_with(tmp, slow_restart));
    bt_fmt(config, sizeof config, "%s", cfgdir);
    char path[700];
    bt_fmt(path, sizeof path, "%s/baton.yaml", cfgdir);
    char *yaml = replace(slurp(path), "level: warn", "level: info");
    CHECK(yaml && strstr(yaml, "level: info"));
    spit(path, yaml ? yaml : "");
    free(yaml);

    if (getenv("BATON_UNDER_VALGRIND")) {
        srv_a.valgrind = true;
        notify_ms = 4000;
        stop_ms = 15000;
    }
    alice_token = token_for("alice");
    bob_token = token_for("bob");
    if (start_server(&srv_a) && start_server(&srv_b))
        RUN(test_shared);
    long long ta = stop_server(&srv_a), tb = stop_server(&srv_b);
    printf("SIGTERM: serve A stopped in %lld ms, serve B in %lld ms\n", ta, tb);
    CHECK_MSG(ta >= 0 && ta < stop_ms, "serve A took %lld ms to stop", ta);
    CHECK_MSG(tb >= 0 && tb < stop_ms, "serve B took %lld ms to stop", tb);
    if (bt_test_failed) {
        const struct server *all[] = {&srv_a, &srv_b};
        for (int i = 0; i < 2; i++) {
            char *text = slurp(all[i]->log);
            fprintf(stderr, "--- serve %s log ---\n%s\n", all[i]->name, text ? text : "");
            free(text);
        }
    }
    free(alice_token);
    free(bob_token);
    rm_tree(tmp);
    return bt_test_finish();
}
