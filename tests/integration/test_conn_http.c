/*
 * The http and netbox connectors against real HTTP services: the fakes of
 * tests/fakes/services.mjs (node), started on a free loopback port. Every
 * operation of every connector; answers identical to the builtin
 * connector's over the same assets; the fault matrix (service down, slow
 * beyond the timeout, 503 flapping then recovering, 429 with Retry-After,
 * malformed JSON, a 50 MB body, a connection reset mid-body, a wrong
 * Content-Type) with what the user sees, the bt_err, how many requests
 * reached the service; the breaker opening and closing; the bulkhead; that
 * no plan runs twice; that tokens appear in no message, log line or audit
 * record; and `baton check` / `baton ask` with these connectors configured.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>

#include "bot/log.h"
#include "bot/store/store.h"
#include "connectors/conn_test.h"
#include "connectors/connectors.h"
#include "harness.h"
#include "test.h"

#define NB_TOKEN "nbx-SECRET-7f3a9c01"
#define AUTO_TOKEN "auto-SECRET-51d2e8"
#define ASSETS_TOKEN "assets-SECRET-0b8e44"
#define BAD_TOKEN "wrong-SECRET-zz9911"

static pid_t g_fake = -1;
static int g_fake_in = -1;                  /* the fake's stdin: it exits when this closes */
static int g_port, g_dead_port, g_tls_port; /* g_tls_port 0: no TLS test */
static char *g_dir, *g_db, *g_logpath;
static char g_tls_dir[] = "/tmp/bt-conn-tls-XXXXXX";
static char g_cert[600], g_key[600];
static FILE *g_log;
static bt_config *g_cfg;
static bt_connectors *g_conn;
static bt_buf g_errs = BT_BUF_INIT(1 << 22); /* every err text seen */

/* ---- the fake services ------------------------------------------------------ */

/* Run argv (no shell) with output discarded; true when it exits 0 within
 * the deadline. */
static bool run_quiet(const char *const *argv, int64_t timeout_ms)
{
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    int status = 0;
    int64_t deadline = bt_mono_ms() + timeout_ms;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (bt_mono_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return false;
        }
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* A self-signed certificate for 127.0.0.1, if the openssl tool is here. */
static bool make_cert(void)
{
    if (!mkdtemp(g_tls_dir))
        return false;
    bt_fmt(g_cert, sizeof g_cert, "%s/cert.pem", g_tls_dir);
    bt_fmt(g_key, sizeof g_key, "%s/key.pem", g_tls_dir);
    const char *const argv[] = {
        "openssl",  "req",           "-x509",   "-newkey",
        "rsa:2048", "-nodes",        "-keyout", g_key,
        "-out",     g_cert,          "-days",   "2",
        "-subj",    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        NULL};
    return run_quiet(argv, 30000);
}

static bool fake_start(bool tls)
{
    int out[2], in[2];
    if (pipe(out) || pipe(in))
        return false;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[1]);
        close(out[0]);
        if (tls)
            execlp("node", "node", BT_SOURCE_DIR "/tests/fakes/services.mjs", "--port", "0",
                   "--netbox-token", NB_TOKEN, "--automation-token", AUTO_TOKEN, "--tls-cert",
                   g_cert, "--tls-key", g_key, (char *)NULL);
        else
            execlp("node", "node", BT_SOURCE_DIR "/tests/fakes/services.mjs", "--port", "0",
                   "--netbox-token", NB_TOKEN, "--automation-token", AUTO_TOKEN, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    g_fake = pid;
    g_fake_in = in[1];
    char line[128];
    size_t n = 0;
    int64_t deadline = bt_mono_ms() + 20000;
    while (n + 1 < sizeof line && bt_mono_ms() < deadline && !memchr(line, '\n', n)) {
        struct pollfd p = {out[0], POLLIN, 0};
        if (poll(&p, 1, 500) <= 0)
            continue;
        ssize_t k = read(out[0], line + n, sizeof line - 1 - n);
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    line[n] = '\0';
    close(out[0]);
    long port = 0, tls_port = 0;
    char *nl = strchr(line, '\n');
    if (nl)
        *nl = '\0';
    char *sp = strncmp(line, "listening ", 10) == 0 ? strchr(line + 10, ' ') : NULL;
    if (sp)
        *sp = '\0';
    if (strncmp(line, "listening ", 10) != 0 || !bt_parse_long(line + 10, 1, 65535, &port) ||
        (tls && (!sp || !bt_parse_long(sp + 1, 1, 65535, &tls_port)))) {
        fprintf(stderr, "the fake services did not start (is node installed?): '%s'\n", line);
        return false;
    }
    g_port = (int)port;
    g_tls_port = (int)tls_port;
    return true;
}

static void fake_stop(void)
{
    if (g_fake <= 0)
        return;
    kill(g_fake, SIGTERM);
    int64_t deadline = bt_mono_ms() + 5000;
    while (waitpid(g_fake, NULL, WNOHANG) == 0) {
        if (bt_mono_ms() > deadline) {
            kill(g_fake, SIGKILL);
            waitpid(g_fake, NULL, 0);
            break;
        }
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    close(g_fake_in);
    g_fake = -1;
}

/* One request to the fake's control endpoints over a plain socket (the
 * connectors' own client is what is under test); the body of the answer. */
static char *fake_http(const char *method, const char *path, const char *body)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        if (fd >= 0)
            close(fd);
        return bt_strdup("");
    }
    char *req = bt_asprintf("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                            "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                            method, path, body ? strlen(body) : 0, body ? body : "");
    size_t len = strlen(req), off = 0;
    while (off < len) {
        ssize_t k = write(fd, req + off, len - off);
        if (k <= 0)
            break;
        off += (size_t)k;
    }
    free(req);
    bt_buf b = BT_BUF_INIT(1 << 20);
    int64_t deadline = bt_mono_ms() + 10000;
    while (bt_mono_ms() < deadline) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 500) <= 0)
            continue;
        char buf[4096];
        ssize_t k = read(fd, buf, sizeof buf);
        if (k <= 0)
            break;
        bt_buf_append(&b, buf, (size_t)k);
    }
    close(fd);
    char *all = bt_buf_steal(&b);
    char *sep = strstr(all, "\r\n\r\n");
    char *res = bt_strdup(sep ? sep + 4 : "");
    free(all);
    return res;
}

static json_t *fake_json(const char *method, const char *path, const char *body)
{
    char *text = fake_http(method, path, body);
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    return j ? j : json_object();
}

static void fake_reset(void)
{
    json_decref(fake_json("POST", "/_reset", NULL));
}

static void fault(const char *prefix, const char *mode, int count, int retry_after, int delay_ms)
{
    json_t *f = json_pack("{s:s, s:s}", "path_prefix", prefix, "mode", mode);
    if (count >= 0)
        json_object_set_new(f, "count", json_integer(count));
    if (retry_after >= 0)
        json_object_set_new(f, "retry_after", json_integer(retry_after));
    if (delay_ms >= 0)
        json_object_set_new(f, "delay_ms", json_integer(delay_ms));
    char *body = json_dumps(f, JSON_COMPACT);
    json_decref(fake_json("POST", "/_fault", body));
    free(body);
    json_decref(f);
}

/* Requests the fake received on paths starting with prefix. */
static long requests(const char *prefix)
{
    json_t *s = fake_json("GET", "/_stats", NULL);
    long n = 0;
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(s, "requests"), k, v)
    {
        if (strncmp(k, prefix, strlen(prefix)) == 0)
            n += (long)json_integer_value(v);
    }
    json_decref(s);
    return n;
}

/* ---- the connectors ------------------------------------------------------------- */

static int dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    bind(fd, (struct sockaddr *)&sa, sizeof sa);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    close(fd); /* nothing listens there now */
    return ntohs(sa.sin_port);
}

static const char *const shared_keys = "    connect_timeout_ms: 500\n"
                                       "    timeout_ms: 1000\n"
                                       "    max_body_bytes: 1048576\n"
                                       "    retries: 2\n"
                                       "    retry_base_ms: 20\n"
                                       "    retry_cap_ms: 2000\n";

/* Three views of the HTTPS endpoint: verified by default (and so refused:
 * the certificate is self-signed), verified against its own certificate,
 * and not verified. */
static const char *tls_yaml(void)
{
    static char text[2048];
    if (!g_tls_port)
        return "";
    bt_fmt(text, sizeof text,
           "  tls:\n"
           "    type: http\n"
           "    api: assets\n"
           "    base_url: https://127.0.0.1:%d/assets\n"
           "    retries: 0\n"
           "  tlsca:\n"
           "    type: http\n"
           "    api: assets\n"
           "    base_url: https://127.0.0.1:%d/assets\n"
           "    ca_file: %s\n"
           "  tlsoff:\n"
           "    type: http\n"
           "    api: assets\n"
           "    base_url: https://127.0.0.1:%d/assets\n"
           "    verify_tls: false\n",
           g_tls_port, g_tls_port, g_cert, g_tls_port);
    return text;
}

static char *baton_yaml(void)
{
    return bt_asprintf("connectors:\n"
                       "  inventory:\n"
                       "    type: builtin\n"
                       "  assets:\n"
                       "    type: http\n"
                       "    api: assets\n"
                       "    base_url: http://127.0.0.1:%d/assets/\n"
                       "    token_env: BT_TEST_ASSETS_TOKEN\n%s"
                       "  nb:\n"
                       "    type: netbox\n"
                       "    base_url: http://127.0.0.1:%d\n"
                       "    token_env: BT_TEST_NB_TOKEN\n%s"
                       "  nbbad:\n"
                       "    type: netbox\n"
                       "    base_url: http://127.0.0.1:%d\n"
                       "    token_env: BT_TEST_BAD_TOKEN\n"
                       "  automation:\n"
                       "    type: http\n"
                       "    api: automation\n"
                       "    base_url: http://127.0.0.1:%d/automation\n"
                       "    token_env: BT_TEST_AUTO_TOKEN\n"
                       "    tenant_id: tenant-7\n"
                       "    actor_id: baton-test\n%s"
                       "  down:\n"
                       "    type: http\n"
                       "    api: assets\n"
                       "    base_url: http://127.0.0.1:%d/assets\n%s"
                       "  autodown:\n"
                       "    type: http\n"
                       "    api: automation\n"
                       "    base_url: http://127.0.0.1:%d/automation\n%s"
                       "  busy:\n"
                       "    type: http\n"
                       "    api: assets\n"
                       "    base_url: http://127.0.0.1:%d/assets\n"
                       "    max_concurrent: 1\n"
                       "    queue_wait_ms: 300\n"
                       "    timeout_ms: 10000\n"
                       "%s",
                       g_port, shared_keys, g_port, shared_keys, g_port, g_port, shared_keys,
                       g_dead_port, shared_keys, g_dead_port, shared_keys, g_port, tls_yaml());
}

/* Every message is kept for test_no_secrets; BT_TEST_VERBOSE=1 shows
 * them, to read what a user would see. */
static void note_err(const char *err)
{
    if (err[0] && getenv("BT_TEST_VERBOSE"))
        fprintf(stderr, "  err: %s\n", err);
    bt_buf_puts(&g_errs, err);
    bt_buf_puts(&g_errs, "\n");
}

/* Invoke operation op of connector conn (tool named after op); inputs is
 * stolen (may be NULL). */
static enum bt_err call_tool(const json_t *tool, json_t *inputs, json_t **res, char *err)
{
    *res = NULL;
    enum bt_err e = bt_connectors_invoke(g_conn, tool, inputs, NULL, res, err, BT_ERRLEN);
    note_err(err);
    json_decref(inputs);
    return e;
}

static enum bt_err call(const char *conn, const char *op, json_t *inputs, json_t **res, char *err)
{
    json_t *tool = json_pack("{s:s, s:s, s:s}", "name", op, "connector", conn, "operation", op);
    enum bt_err e = call_tool(tool, inputs, res, err);
    json_decref(tool);
    return e;
}

static const char *text_of(const json_t *res)
{
    const char *t = json_string_value(json_object_get(res, "text"));
    return t ? t : "(no text)";
}

static void setup(void)
{
    setenv("BT_TEST_ASSETS_TOKEN", ASSETS_TOKEN, 1);
    setenv("BT_TEST_NB_TOKEN", NB_TOKEN, 1);
    setenv("BT_TEST_AUTO_TOKEN", AUTO_TOKEN, 1);
    setenv("BT_TEST_BAD_TOKEN", BAD_TOKEN, 1);
    /* A proxy from the environment would take loopback requests elsewhere. */
    static const char *const proxies[] = {"http_proxy", "https_proxy", "HTTPS_PROXY",
                                          "ALL_PROXY",  "all_proxy",   NULL};
    for (size_t i = 0; proxies[i]; i++)
        unsetenv(proxies[i]);
    bool tls = make_cert();
    if (!tls)
        fprintf(stderr, "no openssl tool: the TLS checks are skipped\n");
    if (!fake_start(tls))
        exit(1);
    g_dead_port = dead_port();
    char *yaml = baton_yaml();
    g_dir = conn_config_dir(yaml, NULL, NULL);
    free(yaml);
    g_db = bt_asprintf("%s/baton.db", g_dir);
    g_logpath = bt_asprintf("%s/log.jsonl", g_dir);
    g_log = fopen(g_logpath, "w");
    bt_log_set_stream(g_log);
    bt_log_set_level(BT_LOG_DEBUG);
    bt_diag *load = bt_diag_new(), *d = bt_diag_new();
    g_cfg = bt_config_load(g_dir, load);
    g_conn = g_cfg ? bt_connectors_new(g_cfg, g_db, d) : NULL;
    conn_dump_diag(load);
    conn_dump_diag(d);
    if (!g_conn) {
        fake_stop();
        exit(1);
    }
    bt_diag_free(d);
    bt_diag_free(load);
    /* The fault matrix must not trip the breakers; test_breaker sets them. */
    bt_connectors_set_breaker(g_conn, 1000, 1);
}

static void teardown(void)
{
    bt_connectors_free(g_conn);
    bt_config_free(g_cfg);
    bt_log_set_stream(stderr);
    if (g_log)
        fclose(g_log);
    fake_stop();
    conn_rmtree(g_dir);
    conn_rmtree(g_tls_dir);
    free(g_dir);
    free(g_db);
    free(g_logpath);
    bt_buf_free(&g_errs);
}

/* ---- operations ----------------------------------------------------------------- */

static const char *const all_count =
    "You have 30 assets: 7 Windows workstations, 6 Linux web servers, 5 Linux database servers, "
    "4 Linux API servers, 2 Linux cache servers, 1 Linux backup server, 1 Linux CI server, "
    "1 Linux file server, 1 Linux load balancer, 1 Linux monitoring server, 1 Windows directory "
    "server.";

static void test_assets_operations(void)
{
    static const char *const conns[] = {"assets", "nb"};
    for (size_t c = 0; c < 2; c++) {
        const char *k = conns[c];
        fake_reset();
        json_t *res;
        char err[BT_ERRLEN];
        CHECK_INT(call(k, "count_assets", NULL, &res, err), BT_OK);
        CHECK_STR(text_of(res), all_count);
        CHECK_INT(json_integer_value(json_object_get(json_object_get(res, "data"), "total")), 30);
        json_decref(res);
        /* Paged: 10 per page at most. OpsConductor: 30 assets, 3 pages;
         * NetBox: 14 devices and 16 VMs, 2 pages each. */
        CHECK_INT(requests(c == 0 ? "/assets" : "/api/"), c == 0 ? 3 : 4);

        CHECK_INT(call(k, "count_assets", json_pack("{s:s}", "os", "windows"), &res, err), BT_OK);
        CHECK_STR(text_of(res),
                  "You have 8 Windows assets: 7 Windows workstations, 1 Windows directory server.");
        json_decref(res);

        CHECK_INT(call(k, "count_assets", json_pack("{s:s, s:s}", "tag", "pci", "status", "active"),
                       &res, err),
                  BT_OK);
        CHECK_STR(text_of(res), "You have 4 active assets tagged pci: 2 Linux API servers, 2 Linux "
                                "database servers.");
        json_decref(res);

        CHECK_INT(call(k, "count_assets", json_pack("{s:s}", "role", "nosuch"), &res, err), BT_OK);
        CHECK_STR(text_of(res), "You have no assets with role nosuch.");
        json_decref(res);

        CHECK_INT(call(k, "list_assets",
                       json_pack("{s:s, s:s}", "role", "web", "environment", "production"), &res,
                       err),
                  BT_OK);
        CHECK_STR(text_of(res),
                  "3 production assets with role web: web-prd-01, web-prd-02, web-prd-03.");
        json_t *first = json_array_get(json_object_get(res, "data"), 0);
        CHECK_STR(json_string_value(json_object_get(first, "ip")), "10.20.1.10");
        CHECK_STR(json_string_value(json_object_get(first, "hostname")),
                  "web-prd-01.example.internal");
        CHECK_STR(json_string_value(json_object_get(first, "connection")), "ssh");
        CHECK_INT(json_integer_value(json_object_get(first, "ram_gb")), 8);
        CHECK(json_object_get(first, "_id") == NULL);
        json_decref(res);

        CHECK_INT(call(k, "list_assets", json_pack("{s:s, s:i}", "min_ram_gb", "16", "limit", 2),
                       &res, err),
                  BT_OK);
        CHECK_MSG(strncmp(text_of(res), "2 assets with at least 16 GB of RAM (of 18): ", 45) == 0,
                  "%s", text_of(res));
        json_decref(res);

        CHECK_INT(call(k, "get_asset", json_pack("{s:s}", "host", "db-prd-01"), &res, err), BT_OK);
        CHECK_STR(text_of(res), "db-prd-01 (db-prd-01.example.internal, 10.20.3.16): Linux Debian "
                                "12 database server, production, active, datacenter dc1, 16 CPUs, "
                                "64 GB RAM, connection ssh; services: postgresql; tags: pci.");
        json_decref(res);

        CHECK_INT(call(k, "get_asset", json_pack("{s:s}", "host", "10.20.4.33"), &res, err), BT_OK);
        CHECK_STR(json_string_value(json_object_get(json_object_get(res, "data"), "name")),
                  "ws-win-01");
        json_decref(res);

        CHECK_INT(call(k, "get_asset", json_pack("{s:s}", "host", "nope-01"), &res, err),
                  BT_EINVAL);
        CHECK_STR(err, "no asset named 'nope-01' in the inventory");
        CHECK(res == NULL);

        CHECK_INT(call(k, "list_assets", json_pack("{s:s}", "colour", "blue"), &res, err),
                  BT_EINVAL);
        CHECK(strstr(err, "unknown filter 'colour'") != NULL);
        CHECK_INT(call(k, "tcp_check", NULL, &res, err), BT_EINVAL);
        CHECK_MSG(strstr(err, "has no operation 'tcp_check'") != NULL, "%s", err);
    }
}

/* The same questions to the builtin connector, over the same assets loaded
 * into a store, give the same answers, word for word. */
static void test_same_as_builtin(void)
{
    json_t *all;
    char err[BT_ERRLEN];
    CHECK_INT(call("assets", "list_assets", NULL, &all, err), BT_OK);
    bt_store *st = NULL;
    char serr[BT_ERRLEN];
    CHECK_INT(bt_store_open(g_db, &st, serr, sizeof serr), BT_OK);
    CHECK_INT(bt_store_assets_replace(st, json_object_get(all, "data"), serr, sizeof serr), BT_OK);
    bt_store_close(st);
    json_decref(all);

    const char *const filters[] = {
        "{}",
        "{\"os\": \"windows\"}",
        "{\"environment\": \"production\", \"status\": \"active\"}",
        "{\"tag\": \"PCI\"}",
        "{\"role\": \"database\", \"datacenter\": \"dc2\"}",
        "{\"name_contains\": \"PRD\"}",
        "{\"ip\": \"10.20.1.\"}",
        "{\"host\": \"lb-prd-01.example.internal\"}",
        "{\"min_ram_gb\": 16, \"max_ram_gb\": \"32\", \"min_cpu\": 8}",
        "{\"connection\": \"winrm\"}",
        "{\"status\": \"inactive\"}",
        "{\"role\": \"nosuch\"}",
        "{\"tag\": \"unused-tag\"}",
        "{\"limit\": 5, \"offset\": 3}",
        NULL,
    };
    static const char *const ops[] = {"count_assets", "list_assets"};
    static const char *const conns[] = {"assets", "nb"};
    for (size_t i = 0; filters[i]; i++) {
        for (size_t o = 0; o < 2; o++) {
            json_t *want = NULL;
            enum bt_err we = call("inventory", ops[o], json_loads(filters[i], 0, NULL), &want, err);
            for (size_t c = 0; c < 2; c++) {
                json_t *got = NULL;
                enum bt_err ge = call(conns[c], ops[o], json_loads(filters[i], 0, NULL), &got, err);
                CHECK_MSG(ge == we, "%s %s %s: %d vs %d", conns[c], ops[o], filters[i], ge, we);
                CHECK_MSG(got && want && json_equal(got, want), "%s %s %s:\n got %s\nwant %s",
                          conns[c], ops[o], filters[i], text_of(got), text_of(want));
                json_decref(got);
            }
            json_decref(want);
        }
    }
    static const char *const hosts[] = {"web-prd-02", "WS-WIN-03.example.internal", "10.20.2.27",
                                        "kiosk-01", NULL};
    for (size_t i = 0; hosts[i]; i++) {
        json_t *want = NULL;
        CHECK_INT(call("inventory", "get_asset", json_pack("{s:s}", "host", hosts[i]), &want, err),
                  BT_OK);
        for (size_t c = 0; c < 2; c++) {
            json_t *got = NULL;
            CHECK_INT(call(conns[c], "get_asset", json_pack("{s:s}", "host", hosts[i]), &got, err),
                      BT_OK);
            CHECK_MSG(got && want && json_equal(got, want), "%s get %s:\n got %s\nwant %s",
                      conns[c], hosts[i], text_of(got), text_of(want));
            json_decref(got);
        }
        json_decref(want);
    }
}

static void test_netbox_auth_and_links(void)
{
    fake_reset();
    json_t *res;
    char err[BT_ERRLEN];
    CHECK_INT(call("nbbad", "count_assets", NULL, &res, err), BT_ECONNECTOR);
    CHECK_MSG(strstr(err, "NetBox 'nbbad' (127.0.0.1:") != NULL &&
                  strstr(err, "refused the credentials: 403 Forbidden: Invalid token (check the "
                              "token in environment variable BT_TEST_BAD_TOKEN)") != NULL,
              "%s", err);
    CHECK_INT(requests("/api/"), 1); /* never retried */

    /* A `next` link to another host is not followed: it would carry the
     * token there. */
    fake_reset();
    fault("/api/dcim/devices/", "foreign_next", -1, -1, -1);
    CHECK_INT(call("nb", "count_assets", NULL, &res, err), BT_ECONNECTOR);
    CHECK_MSG(strstr(err, "sent a `next` link to another address") != NULL, "%s", err);
    CHECK_INT(requests("/api/"), 1);
    fault("/api/dcim/devices/", "none", -1, -1, -1);
}

/* ---- the automation service ------------------------------------------------------- */

static json_t *auto_tool(const char *name, const char *remote, int timeout_s)
{
    json_t *t = json_pack("{s:s, s:s, s:s}", "name", name, "connector", "automation", "operation",
                          "execute_plan");
    if (remote)
        json_object_set_new(t, "remote_tool", json_string(remote));
    if (timeout_s)
        json_object_set_new(t, "timeout_s", json_integer(timeout_s));
    return t;
}

static json_t *fake_calls(void)
{
    return fake_json("GET", "/_calls", NULL);
}

static size_t ncalls(void)
{
    json_t *c = fake_calls();
    size_t n = json_array_size(json_object_get(c, "calls"));
    json_decref(c);
    return n;
}

static void test_automation(void)
{
    fake_reset();
    json_t *res;
    char err[BT_ERRLEN];
    json_t *tool = auto_tool("restart_service", NULL, 0);
    CHECK_INT(call_tool(tool, json_pack("{s:s, s:s}", "host", "web-prd-01", "service", "nginx"),
                        &res, err),
              BT_OK);
    CHECK_STR(json_string_value(json_array_get(json_object_get(res, "command"), 0)),
              "restart_service");
    CHECK_INT(json_integer_value(json_object_get(res, "exit_code")), 0);
    CHECK_STR(json_string_value(json_object_get(res, "stdout")),
              "ran restart_service {\"host\":\"web-prd-01\",\"service\":\"nginx\"}\n");
    CHECK_STR(json_string_value(json_object_get(res, "stderr")), "");
    CHECK_STR(json_string_value(json_object_get(res, "status")), "completed");
    CHECK_INT(json_integer_value(json_object_get(res, "duration_ms")), 12);
    CHECK(json_is_false(json_object_get(res, "timed_out")));
    const char *id = json_string_value(json_object_get(res, "execution_id"));
    CHECK(id && strlen(id) == 32);
    json_t *calls = fake_calls();
    json_t *c0 = json_array_get(json_object_get(calls, "calls"), 0);
    CHECK_STR(json_string_value(json_object_get(c0, "execution_id")), id ? id : "");
    CHECK_STR(json_string_value(json_object_get(c0, "tenant_id")), "tenant-7");
    CHECK_STR(json_string_value(json_object_get(c0, "actor_id")), "baton-test");
    json_decref(calls);
    json_decref(res);
    json_decref(tool);

    /* A failing step: the result is kept, the error says why. */
    tool = auto_tool("break_it", "fail", 0);
    CHECK_INT(call_tool(tool, NULL, &res, err), BT_ECONNECTOR);
    CHECK_MSG(strstr(err, "automation service 'automation' (127.0.0.1:") != NULL &&
                  strstr(err, "): fail failed (status failed, exit code 3): step 1 (fail) failed "
                              "with exit code 3 (execution ID ") != NULL,
              "%s", err);
    CHECK_INT(json_integer_value(json_object_get(res, "exit_code")), 3);
    CHECK_STR(json_string_value(json_object_get(res, "stderr")),
              "boom: step failed\nsecond line\n");
    json_decref(res);
    json_decref(tool);
    CHECK_INT(ncalls(), 2);
}

/* ---- the fault matrix -------------------------------------------------------------- */

struct fault_case {
    const char *mode;
    int count, retry_after, delay_ms;
    enum bt_err want;
    const char *says;   /* in err, after the service's label */
    long want_requests; /* reaching the service */
    int64_t min_ms, max_ms;
};

/* A read: every transient fault is retried (retries: 2, so 3 requests);
 * permanent ones are not. */
static const struct fault_case read_matrix[] = {
    {"down", -1, -1, -1, BT_EUNAVAIL,
     "closed the connection before its answer was complete (tried 3 times)", 3, 0, 8000},
    {"slow", -1, -1, 1500, BT_ETIMEOUT, "did not answer within 1000 ms (tried 3 times)", 3, 3000,
     12000},
    {"flap503", -1, -1, -1, BT_EUNAVAIL,
     "is unavailable: 503 Service Unavailable: service unavailable (tried 3 times)", 3, 0, 8000},
    {"flap503", 2, -1, -1, BT_OK, NULL, 3, 0, 8000}, /* flapping, then recovered */
    {"429", 1, 1, -1, BT_OK, NULL, 2, 1000, 8000},   /* Retry-After: 1 honoured */
    {"429", -1, 1, -1, BT_EUNAVAIL,
     "is rate limiting: 429 Too Many Requests: too many requests (tried 3 times)", 3, 2000, 10000},
    {"429", -1, 30, -1, BT_EUNAVAIL,
     "is rate limiting: 429 Too Many Requests: too many requests; it asks to wait 30 s, longer "
     "than retry_cap_ms (2000 ms), so it was not retried",
     1, 0, 5000},
    {"badjson", -1, -1, -1, BT_ECONNECTOR, "sent malformed JSON: ", 1, 0, 5000},
    {"huge", -1, -1, -1, BT_ECONNECTOR,
     "sent a response larger than 1048576 bytes (max_body_bytes); refused", 1, 0, 5000},
    {"reset", -1, -1, -1, BT_EUNAVAIL,
     "closed the connection before its answer was complete (tried 3 times)", 3, 0, 8000},
    {"reset", 1, -1, -1, BT_OK, NULL, 2, 0, 8000},
    {"ctype", -1, -1, -1, BT_ECONNECTOR,
     "answered with Content-Type 'text/html; charset=utf-8', not application/json", 1, 0, 5000},
};

static void run_read_matrix(const char *conn, const char *label, const char *prefix,
                            json_t *(*inputs)(void))
{
    for (size_t i = 0; i < sizeof read_matrix / sizeof read_matrix[0]; i++) {
        const struct fault_case *fc = &read_matrix[i];
        fake_reset();
        fault(prefix, fc->mode, fc->count, fc->retry_after, fc->delay_ms);
        json_t *res = NULL;
        char err[BT_ERRLEN];
        int64_t t0 = bt_mono_ms();
        enum bt_err e = call(conn, "list_assets", inputs(), &res, err);
        int64_t ms = bt_mono_ms() - t0;
        CHECK_MSG(e == fc->want, "%s %s/%d: got %d (%s), want %d", conn, fc->mode, fc->count, e,
                  err, fc->want);
        if (fc->says) {
            char want[600];
            bt_fmt(want, sizeof want, "%s (127.0.0.1:%d) %s", label, g_port, fc->says);
            CHECK_MSG(strncmp(err, want, strlen(want)) == 0, "%s %s:\n got %s\nwant %s", conn,
                      fc->mode, err, want);
            CHECK(res == NULL);
        } else {
            CHECK_MSG(json_array_size(json_object_get(res, "data")) > 0, "%s %s: %s", conn,
                      fc->mode, err);
        }
        long n = requests(prefix);
        /* When a kept-alive connection turns out dead before any answer,
         * curl itself sends a GET once more on a new one (never a POST:
         * those always use a new connection). */
        bool curl_resent = strcmp(fc->mode, "down") == 0 && n == fc->want_requests + 1;
        CHECK_MSG(n == fc->want_requests || curl_resent, "%s %s/%d: %ld requests, want %ld", conn,
                  fc->mode, fc->count, n, fc->want_requests);
        CHECK_MSG(ms >= fc->min_ms && ms <= fc->max_ms, "%s %s/%d: %lld ms, want %lld..%lld", conn,
                  fc->mode, fc->count, (long long)ms, (long long)fc->min_ms, (long long)fc->max_ms);
        json_decref(res);
    }
    fake_reset();
}

static json_t *windows_filter(void)
{
    return json_pack("{s:s}", "os", "windows"); /* one page */
}

static json_t *workstation_filter(void)
{
    return json_pack("{s:s}", "role", "workstation"); /* one page of devices */
}

static void test_fault_matrix_assets(void)
{
    char label[64];
    bt_fmt(label, sizeof label, "asset service 'assets'");
    run_read_matrix("assets", label, "/assets", windows_filter);
}

static void test_fault_matrix_netbox(void)
{
    run_read_matrix("nb", "NetBox 'nb'", "/api/dcim/devices/", workstation_filter);
}

static void test_service_down(void)
{
    json_t *res;
    char err[BT_ERRLEN];
    char want[200];
    bt_fmt(want, sizeof want,
           "asset service 'down' (127.0.0.1:%d) refused the connection (is it running?) (tried 3 "
           "times)",
           g_dead_port);
    CHECK_INT(call("down", "count_assets", NULL, &res, err), BT_EUNAVAIL);
    CHECK_STR(err, want);
    /* A plan is retried when it never left: the connection was refused. */
    json_t *tool = json_pack("{s:s, s:s, s:s}", "name", "restart_service", "connector", "autodown",
                             "operation", "execute_plan");
    CHECK_INT(call_tool(tool, NULL, &res, err), BT_EUNAVAIL);
    bt_fmt(want, sizeof want,
           "automation service 'autodown' (127.0.0.1:%d) refused the connection (is it running?) "
           "(tried 3 times)",
           g_dead_port);
    CHECK_STR(err, want);
    json_decref(tool);
}

/* Writes: once a plan may have reached the service it is never sent again. */
static void test_fault_matrix_automation(void)
{
    static const struct {
        const char *mode;
        int retry_after, delay_ms;
        enum bt_err want;
        const char *says;
        size_t ran; /* plans the service ran */
    } cases[] = {
        {"flap503", -1, -1, BT_EUNAVAIL,
         "is unavailable: 503 Service Unavailable: service unavailable; not retried, because the "
         "request may already have been acted on (execution ID ",
         0},
        {"429", 1, -1, BT_EUNAVAIL,
         "is rate limiting: 429 Too Many Requests: too many requests; not retried", 0},
        {"slow", -1, 1500, BT_ETIMEOUT,
         "did not answer within 1000 ms; not retried, because the request may already have been "
         "acted on (execution ID ",
         1},
        {"reset", -1, -1, BT_ETIMEOUT,
         "closed the connection before its answer was complete; not retried", 0},
        {"down", -1, -1, BT_ETIMEOUT,
         "closed the connection before its answer was complete; not retried", 0},
        {"badjson", -1, -1, BT_ECONNECTOR, "sent malformed JSON: ", 0},
        {"huge", -1, -1, BT_ECONNECTOR, "sent a response larger than 1048576 bytes", 0},
        {"ctype", -1, -1, BT_ECONNECTOR, "answered with Content-Type 'text/html; charset=utf-8'",
         0},
    };
    json_t *tool = auto_tool("restart_service", NULL, 0);
    char label[200];
    bt_fmt(label, sizeof label, "automation service 'automation' (127.0.0.1:%d) ", g_port);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fake_reset();
        fault("/automation", cases[i].mode, -1, cases[i].retry_after, cases[i].delay_ms);
        json_t *res = NULL;
        char err[BT_ERRLEN];
        enum bt_err e = call_tool(tool, json_pack("{s:s}", "service", "nginx"), &res, err);
        CHECK_MSG(e == cases[i].want, "%s: got %d (%s)", cases[i].mode, e, err);
        char want[600];
        bt_fmt(want, sizeof want, "%s%s", label, cases[i].says);
        CHECK_MSG(strncmp(err, want, strlen(want)) == 0, "%s:\n got %s\nwant %s", cases[i].mode,
                  err, want);
        CHECK_MSG(requests("/automation") == 1, "%s: %ld requests", cases[i].mode,
                  requests("/automation"));
        if (strcmp(cases[i].mode, "slow") == 0) {
            /* The service finishes the plan after baton gave up on it. */
            int64_t deadline = bt_mono_ms() + 5000;
            while (ncalls() < 1 && bt_mono_ms() < deadline) {
                struct timespec ts = {0, 50000000};
                nanosleep(&ts, NULL);
            }
        }
        CHECK_MSG(ncalls() == cases[i].ran, "%s: %zu plans ran", cases[i].mode, ncalls());
        json_decref(res);
    }
    /* 503 once, then the service is back: the next call runs the plan, with
     * a new execution_id, exactly once. */
    fake_reset();
    fault("/automation", "flap503", 1, -1, -1);
    json_t *res = NULL;
    char err[BT_ERRLEN];
    CHECK_INT(call_tool(tool, NULL, &res, err), BT_EUNAVAIL);
    CHECK_INT(call_tool(tool, NULL, &res, err), BT_OK);
    json_decref(res);
    CHECK_INT(requests("/automation"), 2);
    CHECK_INT(ncalls(), 1);
    json_t *c = fake_calls();
    CHECK_INT(json_array_size(json_object_get(c, "duplicates")), 0);
    json_decref(c);
    json_decref(tool);
    fake_reset();
}

/* ---- breaker and bulkhead ------------------------------------------------------------ */

static const char *breaker_state(const char *name)
{
    static char state[32];
    json_t *all = bt_connectors_breakers(g_conn);
    state[0] = '\0';
    for (size_t i = 0; i < json_array_size(all); i++) {
        json_t *b = json_array_get(all, i);
        if (strcmp(json_string_value(json_object_get(b, "connector")), name) == 0)
            bt_strlcpy(state, json_string_value(json_object_get(b, "state")), sizeof state);
    }
    json_decref(all);
    return state;
}

static void test_breaker(void)
{
    bt_connectors_set_breaker(g_conn, 2, 1);
    fake_reset();
    fault("/assets", "flap503", -1, -1, -1);
    json_t *res;
    char err[BT_ERRLEN];
    CHECK_INT(call("assets", "count_assets", NULL, &res, err), BT_EUNAVAIL);
    CHECK_STR(breaker_state("assets"), "closed");
    CHECK_INT(call("assets", "count_assets", NULL, &res, err), BT_EUNAVAIL);
    CHECK_STR(breaker_state("assets"), "open");
    long before = requests("/assets");
    CHECK_INT(before, 6);
    /* Open: fails at once, nothing reaches the service. */
    int64_t t0 = bt_mono_ms();
    CHECK_INT(call("assets", "count_assets", NULL, &res, err), BT_EUNAVAIL);
    CHECK(bt_mono_ms() - t0 < 500);
    CHECK_MSG(strncmp(err,
                      "connector 'assets' is unavailable (circuit open after 2 failures; "
                      "retrying in 1 s)",
                      60) == 0,
              "%s", err);
    CHECK_INT(requests("/assets"), before);
    /* Still failing after the cooldown: the one trial call opens it again. */
    struct timespec ts = {1, 100000000};
    nanosleep(&ts, NULL);
    CHECK_INT(call("assets", "count_assets", NULL, &res, err), BT_EUNAVAIL);
    CHECK_STR(breaker_state("assets"), "open");
    /* The fault clears; after the cooldown the trial call closes it. */
    fault("/assets", "none", -1, -1, -1);
    nanosleep(&ts, NULL);
    CHECK_INT(call("assets", "count_assets", NULL, &res, err), BT_OK);
    CHECK_STR(text_of(res), all_count);
    json_decref(res);
    CHECK_STR(breaker_state("assets"), "closed");
    bt_connectors_set_breaker(g_conn, 1000, 1);
    fake_reset();
}

static void *slow_call(void *arg)
{
    json_t *res = NULL;
    char err[BT_ERRLEN];
    *(enum bt_err *)arg = call("busy", "list_assets", windows_filter(), &res, err);
    json_decref(res);
    return NULL;
}

static void test_bulkhead(void)
{
    fake_reset();
    fault("/assets", "slow", 1, -1, 3000);
    enum bt_err first = BT_EIO;
    pthread_t t;
    pthread_create(&t, NULL, slow_call, &first);
    /* Wait until the slow request holds the one slot. */
    int64_t deadline = bt_mono_ms() + 10000;
    while (requests("/assets") < 1 && bt_mono_ms() < deadline) {
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    json_t *res = NULL;
    char err[BT_ERRLEN];
    int64_t t0 = bt_mono_ms();
    CHECK_INT(call("busy", "list_assets", windows_filter(), &res, err), BT_EUNAVAIL);
    int64_t ms = bt_mono_ms() - t0;
    char want[200];
    bt_fmt(want, sizeof want,
           "connector 'busy' (127.0.0.1:%d) is busy: 1 call in flight (max_concurrent 1); waited ",
           g_port);
    CHECK_MSG(strncmp(err, want, strlen(want)) == 0, "%s", err);
    CHECK_MSG(ms >= 290 && ms < 2500, "%lld ms", (long long)ms);
    pthread_join(t, NULL);
    CHECK_INT(first, BT_OK);
    CHECK_INT(requests("/assets"), 1); /* the refused call never reached it */
    fake_reset();
}

/* Calls on many threads at once share the connector's handle pool. */
static void *many_calls(void *arg)
{
    int *ok = arg;
    for (int i = 0; i < 5; i++) {
        json_t *res = NULL;
        char err[BT_ERRLEN];
        if (call(i % 2 ? "assets" : "nb", "count_assets", NULL, &res, err) == BT_OK &&
            strcmp(text_of(res), all_count) == 0)
            (*ok)++;
        json_decref(res);
    }
    return NULL;
}

static void test_threads(void)
{
    fake_reset();
    pthread_t t[6];
    int ok[6] = {0};
    for (int i = 0; i < 6; i++)
        pthread_create(&t[i], NULL, many_calls, &ok[i]);
    for (int i = 0; i < 6; i++) {
        pthread_join(t[i], NULL);
        CHECK_INT(ok[i], 5);
    }
}

/* A tool's timeout_s bounds the whole call, retries included. */
static void test_tool_deadline(void)
{
    fake_reset();
    fault("/assets", "slow", -1, -1, 1500);
    json_t *tool = json_pack("{s:s, s:s, s:s, s:i}", "name", "asset_count", "connector", "assets",
                             "operation", "count_assets", "timeout_s", 1);
    json_t *res = NULL;
    char err[BT_ERRLEN];
    int64_t t0 = bt_mono_ms();
    CHECK_INT(call_tool(tool, NULL, &res, err), BT_ETIMEOUT);
    int64_t ms = bt_mono_ms() - t0;
    CHECK_MSG(ms >= 900 && ms < 1600, "%lld ms", (long long)ms);
    CHECK_MSG(strstr(err, "did not answer within ") != NULL &&
                  strstr(err, "no time was left to retry within the tool's timeout") != NULL,
              "%s", err);
    CHECK_INT(requests("/assets"), 1);
    json_decref(tool);
    fake_reset();
}

static void test_tls(void)
{
    if (!g_tls_port)
        return;
    fake_reset();
    json_t *res = NULL;
    char err[BT_ERRLEN];
    CHECK_INT(call("tls", "count_assets", NULL, &res, err), BT_ECONNECTOR);
    char want[200];
    bt_fmt(want, sizeof want,
           "asset service 'tls' (127.0.0.1:%d) failed TLS verification: ", g_tls_port);
    CHECK_MSG(strncmp(err, want, strlen(want)) == 0 && strstr(err, "(see verify_tls and ca_file)"),
              "%s", err);
    CHECK_INT(requests("/assets"), 0);
    CHECK_INT(call("tlsca", "count_assets", NULL, &res, err), BT_OK);
    CHECK_STR(text_of(res), all_count);
    json_decref(res);
    CHECK_INT(call("tlsoff", "count_assets", NULL, &res, err), BT_OK);
    json_decref(res);
    CHECK_INT(requests("/assets"), 6);
}

/* ---- configuration, and baton itself ------------------------------------------------- */

static void test_config_problems(void)
{
    char *yaml = bt_asprintf("connectors:\n"
                             "  nb:\n"
                             "    type: netbox\n"
                             "    base_url: http://127.0.0.1:%d\n"
                             "    token_env: BT_TEST_UNSET_TOKEN\n"
                             "  nb2:\n"
                             "    type: netbox\n"
                             "    base_url: http://127.0.0.1:%d\n"
                             "  creds:\n"
                             "    type: http\n"
                             "    api: assets\n"
                             "    base_url: https://user:pw@assets.example/\n"
                             "    token_env: BT_TEST_NB_TOKEN\n"
                             "    timeout_ms: 5\n"
                             "    verify_tls: maybe\n"
                             "    bogus: 1\n"
                             "  noapi:\n"
                             "    type: http\n"
                             "    base_url: ftp://x.example/\n"
                             "  auto:\n"
                             "    type: http\n"
                             "    api: automation\n"
                             "    base_url: http://127.0.0.1:1/automation\n"
                             "    tenant_id: ''\n",
                             g_port, g_port);
    unsetenv("BT_TEST_UNSET_TOKEN");
    char *dir = conn_config_dir(yaml, NULL, NULL);
    free(yaml);
    bt_diag *load = bt_diag_new(), *d = bt_diag_new();
    bt_config *cfg = bt_config_load(dir, load);
    bt_connectors *c = bt_connectors_new(cfg, NULL, d);
    CHECK(c == NULL);
    CHECK(DIAG_HAS(d, "baton.yaml:5: connectors.nb.token_env: environment variable "
                      "BT_TEST_UNSET_TOKEN is not set or empty"));
    CHECK(DIAG_HAS(d, "connectors.nb2.token_env: required, missing"));
    CHECK(DIAG_HAS(d, "baton.yaml:12: connectors.creds.base_url: must not contain a user name"));
    CHECK(DIAG_HAS(d, "connectors.creds.timeout_ms: must be an integer between 100 and 3600000"));
    CHECK(DIAG_HAS(d, "connectors.creds.verify_tls: must be true or false"));
    CHECK(DIAG_HAS(d, "baton.yaml:16: connectors.creds.bogus: unknown key (known: type, base_url"));
    CHECK(DIAG_HAS(d, "connectors.noapi.api: required, missing"));
    CHECK(DIAG_HAS(d, "connectors.auto.tenant_id: must be a string of 1-128"));
    for (size_t i = 0; i < bt_diag_count(d); i++)
        note_err(bt_diag_get(d, i));
    bt_diag_free(d);
    bt_diag_free(load);
    bt_config_free(cfg);
    conn_rmtree(dir);
    free(dir);

    /* Tools checked against the types. */
    d = bt_diag_new();
    load = bt_diag_new();
    char *tools = bt_strdup("tools:\n"
                            "  - name: a\n"
                            "    connector: nb\n"
                            "    operation: tcp_check\n"
                            "  - name: b\n"
                            "    connector: automation\n"
                            "    operation: execute_plan\n"
                            "    remote_tool: 'rm -rf'\n"
                            "  - name: c\n"
                            "    connector: automation\n"
                            "    operation: execute_plan\n"
                            "    remote_tool: restart-service\n");
    char *yaml2 = baton_yaml();
    dir = conn_config_dir(yaml2, tools, NULL);
    free(yaml2);
    free(tools);
    cfg = bt_config_load(dir, load);
    c = bt_connectors_new(cfg, NULL, d);
    CHECK(c != NULL);
    json_t *list = json_object_get(bt_yaml_root(bt_config_tools(cfg)), "tools");
    CHECK(!bt_connectors_check_tool(c, bt_config_tools(cfg), json_array_get(list, 0), d));
    CHECK(!bt_connectors_check_tool(c, bt_config_tools(cfg), json_array_get(list, 1), d));
    CHECK(bt_connectors_check_tool(c, bt_config_tools(cfg), json_array_get(list, 2), d));
    CHECK(DIAG_HAS(d, "tools.yaml:4: tools[0].operation: unknown operation 'tcp_check' for "
                      "connector 'nb' (type netbox knows: count_assets, list_assets, get_asset)"));
    CHECK(DIAG_HAS(d, "tools[1].remote_tool: must be a tool name"));
    CHECK_STR(bt_connectors_type(c, "automation"), "http");
    CHECK_STR(bt_connectors_type(c, "nb"), "netbox");
    bt_connectors_free(c);
    bt_diag_free(d);
    bt_diag_free(load);
    bt_config_free(cfg);
    conn_rmtree(dir);
    free(dir);
}

/* `baton check` and `baton ask` with the shipped configuration, its asset
 * tools moved to a NetBox connector. */
static void test_baton(void)
{
    fake_reset();
    char tmpl[] = "/tmp/bt-conn-http-XXXXXX";
    char *base = mkdtemp(tmpl);
    CHECK(base != NULL);
    if (!base)
        return;
    static const char *const edits[] = {
        "    connector: inventory\n    operation: count_assets",
        "    connector: nb\n    operation: count_assets",
        "    connector: inventory\n    operation: list_assets",
        "    connector: nb\n    operation: list_assets",
        NULL,
    };
    CHECK(make_config_with(base, edits));
    char p[700];
    bt_fmt(p, sizeof p, "%s/baton.yaml", cfgdir);
    char *conf = slurp(p);
    char *nb = bt_asprintf("connectors:\n"
                           "  nb:\n"
                           "    type: netbox\n"
                           "    base_url: http://127.0.0.1:%d\n"
                           "    token_env: BT_TEST_NB_TOKEN\n"
                           "    timeout_ms: 5000\n",
                           g_port);
    conf = replace(conf, "connectors:\n", nb);
    free(nb);
    spit(p, conf ? conf : "");
    free(conf);

    /* The token's variable missing: a configuration problem, named. */
    struct out o =
        run_in(base, "BT_TEST_NB_TOKEN=", (const char *const[]){"--config", cfgdir, "check", NULL});
    CHECK_INT(o.code, 3);
    CHECK_MSG(strstr(o.err, "connectors.nb.token_env: environment variable BT_TEST_NB_TOKEN is "
                            "not set or empty") != NULL,
              "%s%s", o.out, o.err);
    out_free(&o);
    o = run_in(base, NULL, (const char *const[]){"--config", cfgdir, "check", NULL});
    CHECK_MSG(o.code == 0, "%s%s", o.out, o.err);
    out_free(&o);

    o = run_in(
        base, NULL,
        (const char *const[]){"--config", cfgdir, "ask", "how many assets do we have?", NULL});
    CHECK_INT(o.code, 0);
    CHECK_MSG(strstr(o.out, "You have 30 assets: 7 Windows workstations, 6 Linux web servers") !=
                  NULL,
              "%s%s", o.out, o.err);
    CHECK(strstr(o.out, "SECRET") == NULL && strstr(o.err, "SECRET") == NULL);
    out_free(&o);
    CHECK(requests("/api/") >= 4);

    o = run_in(base, NULL, (const char *const[]){"--config", cfgdir, "audit", "--json", NULL});
    CHECK_INT(o.code, 0);
    CHECK_MSG(strstr(o.out, "how many assets") != NULL, "%s", o.out);
    CHECK_MSG(strstr(o.out, "SECRET") == NULL, "the audit log holds a token");
    out_free(&o);

    /* Faults as the user and the audit log see them: the answer says what
     * happened to which service, and the audit log records the failed step
     * with the same words and how many attempts were made. */
    static const struct {
        const char *mode;
        int count, retry_after;
        const char *says;
    } faults[] = {
        {"flap503", 100, -1, "is unavailable: 503"},
        {"badjson", -1, -1, "malformed JSON"},
        {"ctype", -1, -1, "not application/json"},
        {"429", 100, 30, "longer than retry_cap_ms"},
    };
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++) {
        fake_reset();
        fault("/api/", faults[i].mode, faults[i].count, faults[i].retry_after, -1);
        o = run_in(
            base, NULL,
            (const char *const[]){"--config", cfgdir, "ask", "how many assets do we have?", NULL});
        CHECK_MSG(o.code == 8, "%s: exit %d", faults[i].mode, o.code);
        CHECK_MSG(strstr(o.out, faults[i].says) != NULL && strstr(o.out, "127.0.0.1") != NULL,
                  "%s: %s%s", faults[i].mode, o.out, o.err);
        out_free(&o);
        o = run_in(
            base, NULL,
            (const char *const[]){"--config", cfgdir, "audit", "--json", "--since", "1h", NULL});
        /* One JSON object per line; the last step_finished is this one. */
        json_t *last = NULL;
        for (const char *line = o.out; line && *line;) {
            const char *nl = strchr(line, '\n');
            size_t n = nl ? (size_t)(nl - line) : strlen(line);
            json_t *en = json_loadb(line, n, 0, NULL);
            const char *ev = json_string_value(json_object_get(en, "event"));
            if (ev && strcmp(ev, "step_finished") == 0) {
                json_decref(last);
                last = en;
            } else {
                json_decref(en);
            }
            line = nl ? nl + 1 : NULL;
        }
        const json_t *detail = json_object_get(last, "detail");
        CHECK_MSG(last != NULL, "%s: no step_finished in the audit log", faults[i].mode);
        CHECK_STR(json_string_value(json_object_get(detail, "state")), "failed");
        char *d = json_dumps(detail, JSON_COMPACT);
        CHECK_MSG(d && strstr(d, faults[i].says) != NULL, "%s: audit: %s", faults[i].mode,
                  d ? d : "");
        CHECK(d && strstr(d, "SECRET") == NULL);
        free(d);
        json_decref(last);
        out_free(&o);
    }
    fake_reset();
    rm_tree(base);
}

/* No token in any message or log line, whatever happened above. */
static void test_no_secrets(void)
{
    CHECK(g_errs.len > 1000);
    CHECK_MSG(strstr(g_errs.data, "SECRET") == NULL, "a token in an error message");
    fflush(g_log);
    char *log = slurp(g_logpath);
    CHECK(log && strstr(log, "retry 1 of 2") != NULL); /* retries are logged... */
    CHECK_MSG(log && strstr(log, "SECRET") == NULL, "a token in the log");
    free(log);
}

int main(void)
{
    setup();
    RUN(test_assets_operations);
    RUN(test_same_as_builtin);
    RUN(test_netbox_auth_and_links);
    RUN(test_automation);
    RUN(test_service_down);
    RUN(test_fault_matrix_assets);
    RUN(test_fault_matrix_netbox);
    RUN(test_fault_matrix_automation);
    RUN(test_breaker);
    RUN(test_bulkhead);
    RUN(test_threads);
    RUN(test_tool_deadline);
    RUN(test_tls);
    RUN(test_config_problems);
    RUN(test_baton);
    RUN(test_no_secrets);
    teardown();
    return bt_test_finish();
}
