/* Unit tests for connectors/builtin.c: the inventory questions, answered
 * from a real (temporary) SQLite store holding the shipped inventory, and
 * tcp_check against sockets the test opens. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bot/store/store.h"
#include "conn_test.h"
#include "connectors/connectors.h"
#include "test.h"

static bt_config *g_cfg;
static bt_connectors *g_conn;
static char *g_dir, *g_db;

static const json_t *tool(const char *name)
{
    json_t *tools = json_object_get(bt_yaml_root(bt_config_tools(g_cfg)), "tools");
    for (size_t i = 0; i < json_array_size(tools); i++) {
        json_t *t = json_array_get(tools, i);
        if (strcmp(json_string_value(json_object_get(t, "name")), name) == 0)
            return t;
    }
    fprintf(stderr, "no tool %s in config/tools.yaml\n", name);
    abort();
}

/* Invoke a shipped tool; inputs is stolen (may be NULL). */
static enum bt_err run(const char *name, json_t *inputs, const json_t *target, json_t **res,
                       char *err)
{
    enum bt_err e = bt_connectors_invoke(g_conn, tool(name), inputs, target, res, err, BT_ERRLEN);
    json_decref(inputs);
    return e;
}

static void setup(void)
{
    bt_diag *load = bt_diag_new(), *d = bt_diag_new();
    g_cfg = bt_config_load(BT_SOURCE_DIR "/config", load);
    json_t *assets = bt_connectors_inventory(g_cfg, d);
    char tmpl[] = "/tmp/bt-builtin-XXXXXX";
    g_dir = bt_strdup(mkdtemp(tmpl));
    g_db = bt_asprintf("%s/baton.db", g_dir);
    bt_store *st = NULL;
    char err[BT_ERRLEN];
    if (!assets || bt_store_open(g_db, &st, err, sizeof err) != BT_OK ||
        bt_store_assets_replace(st, assets, err, sizeof err) != BT_OK) {
        conn_dump_diag(d);
        fprintf(stderr, "setup failed: %s\n", err);
        exit(1);
    }
    bt_store_close(st);
    json_decref(assets);
    g_conn = bt_connectors_new(g_cfg, g_db, d);
    conn_dump_diag(d);
    if (!g_conn || bt_diag_count(d))
        exit(1);
    bt_diag_free(d);
    bt_diag_free(load);
}

static void teardown(void)
{
    bt_connectors_free(g_conn);
    bt_config_free(g_cfg);
    conn_rmtree(g_dir);
    free(g_dir);
    free(g_db);
}

static json_int_t count_of(const json_t *res)
{
    return json_integer_value(json_object_get(json_object_get(res, "data"), "total"));
}

static const char *text_of(const json_t *res)
{
    return json_string_value(json_object_get(res, "text"));
}

static void test_count_all(void)
{
    json_t *res = NULL;
    char err[BT_ERRLEN];
    CHECK_INT(run("asset_count", NULL, NULL, &res, err), BT_OK);
    CHECK_INT(count_of(res), 24);
    json_t *bd = json_object_get(json_object_get(res, "data"), "breakdown");
    CHECK_INT(json_array_size(bd), 11);
    json_t *first = json_array_get(bd, 0);
    CHECK_STR(json_string_value(json_object_get(first, "label")), "Windows workstations");
    CHECK_STR(json_string_value(json_object_get(first, "os")), "windows");
    CHECK_STR(json_string_value(json_object_get(first, "role")), "workstation");
    CHECK_INT(json_integer_value(json_object_get(first, "count")), 6);
    CHECK_STR(json_string_value(json_object_get(json_array_get(bd, 1), "label")),
              "Linux database servers");
    CHECK_STR(json_string_value(json_object_get(json_array_get(bd, 2), "label")),
              "Linux web servers");
    CHECK_STR(json_string_value(json_object_get(json_array_get(bd, 3), "label")),
              "Linux API servers");
    json_int_t sum = 0;
    for (size_t i = 0; i < json_array_size(bd); i++)
        sum += json_integer_value(json_object_get(json_array_get(bd, i), "count"));
    CHECK_INT(sum, 24);
    CHECK_MSG(strncmp(text_of(res),
                      "You have 24 assets: 6 Windows workstations, 4 Linux database servers, "
                      "4 Linux web servers, 3 Linux API servers, 1 Linux backup server, ",
                      130) == 0,
              "%s", text_of(res));
    CHECK(strstr(text_of(res), "1 Windows directory server.") != NULL);
    CHECK(strstr(text_of(res), "1 Linux load balancer") != NULL);
    json_decref(res);
}

static void test_count_filters(void)
{
    json_t *res = NULL;
    char err[BT_ERRLEN];
    CHECK_INT(run("asset_count", json_pack("{s:s}", "os", "windows"), NULL, &res, err), BT_OK);
    CHECK_INT(count_of(res), 7);
    CHECK_STR(text_of(res), "You have 7 Windows assets: 6 Windows workstations, 1 Windows "
                            "directory server.");
    json_decref(res);

    CHECK_INT(run("asset_count", json_pack("{s:s}", "environment", "production"), NULL, &res, err),
              BT_OK);
    CHECK_INT(count_of(res), 17);
    CHECK(strncmp(text_of(res), "You have 17 production assets: ", 31) == 0);
    json_decref(res);

    CHECK_INT(run("asset_count", json_pack("{s:s}", "tag", "pci"), NULL, &res, err), BT_OK);
    CHECK_INT(count_of(res), 4);
    CHECK_STR(text_of(res), "You have 4 assets tagged pci: 2 Linux API servers, 2 Linux database "
                            "servers.");
    json_decref(res);

    /* numeric filters arrive as strings */
    CHECK_INT(run("asset_count", json_pack("{s:s}", "min_ram_gb", "33"), NULL, &res, err), BT_OK);
    CHECK_INT(count_of(res), 3);
    CHECK(strstr(text_of(res), "with at least 33 GB of RAM") != NULL);
    json_decref(res);
    CHECK_INT(run("asset_count", json_pack("{s:s}", "min_ram_gb", "32"), NULL, &res, err), BT_OK);
    CHECK_INT(count_of(res), 6);
    json_decref(res);

    CHECK_INT(run("asset_count",
                  json_pack("{s:s, s:s}", "environment", "production", "role", "database"), NULL,
                  &res, err),
              BT_OK);
    CHECK_STR(text_of(res), "You have 2 production assets with role database: 2 Linux database "
                            "servers.");
    json_decref(res);

    CHECK_INT(run("asset_count", json_pack("{s:s}", "tag", "nothing-has-this"), NULL, &res, err),
              BT_OK);
    CHECK_INT(count_of(res), 0);
    CHECK_STR(text_of(res), "You have no assets tagged nothing-has-this.");
    json_decref(res);

    CHECK_INT(run("asset_count", json_pack("{s:s}", "min_ram_gb", "lots"), NULL, &res, err),
              BT_EINVAL);
    CHECK(res == NULL);
    CHECK_STR(err, "filter 'min_ram_gb' must be a whole number, found 'lots'");
    CHECK_INT(run("asset_count", json_pack("{s:s}", "colour", "blue"), NULL, &res, err), BT_EINVAL);
    CHECK(strstr(err, "unknown filter 'colour'") != NULL);
}

static void test_list(void)
{
    json_t *res = NULL;
    char err[BT_ERRLEN];
    CHECK_INT(run("asset_list", json_pack("{s:s}", "os", "windows"), NULL, &res, err), BT_OK);
    json_t *data = json_object_get(res, "data");
    CHECK_INT(json_array_size(data), 7);
    CHECK_STR(json_string_value(json_object_get(json_array_get(data, 0), "name")), "win-srv-01");
    CHECK_STR(text_of(res), "7 Windows assets: win-srv-01, ws-win-01, ws-win-02, ws-win-03, "
                            "ws-win-04, ws-win-05, ws-win-06.");
    json_decref(res);

    CHECK_INT(run("asset_list", NULL, NULL, &res, err), BT_OK);
    CHECK_INT(json_array_size(json_object_get(res, "data")), 24);
    CHECK(strstr(text_of(res), " and 14 more.") != NULL);
    json_decref(res);

    CHECK_INT(run("asset_list", json_pack("{s:s}", "ip", "10.20.3."), NULL, &res, err), BT_OK);
    CHECK_INT(json_array_size(json_object_get(res, "data")), 8);
    json_decref(res);
}

static void test_get(void)
{
    const char *keys[][2] = {{"web-01", "web-01"},
                             {"web-prd-01.example.internal", "web-prd-01"},
                             {"10.20.3.21", "db-prd-01"},
                             {"WEB-01", "web-01"},
                             {"localhost", "localhost"}};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        json_t *res = NULL;
        char err[BT_ERRLEN];
        CHECK_INT(run("asset_get", json_pack("{s:s}", "host", keys[i][0]), NULL, &res, err), BT_OK);
        CHECK_STR(json_string_value(json_object_get(json_object_get(res, "data"), "name")),
                  keys[i][1]);
        json_decref(res);
    }
    json_t *res = NULL;
    char err[BT_ERRLEN];
    CHECK_INT(run("asset_get", json_pack("{s:s}", "host", "db-prd-01"), NULL, &res, err), BT_OK);
    CHECK_MSG(strncmp(text_of(res),
                      "db-prd-01 (db-prd-01.example.internal, 10.20.3.21): Linux Debian 12 "
                      "database server, production, active, datacenter dc1, 16 CPUs, 64 GB RAM",
                      130) == 0,
              "%s", text_of(res));
    CHECK(strstr(text_of(res), "services: postgresql") != NULL);
    json_decref(res);

    CHECK_INT(run("asset_get", json_pack("{s:s}", "host", "nope"), NULL, &res, err), BT_EINVAL);
    CHECK(res == NULL);
    CHECK_STR(err, "no asset named 'nope' in the inventory");
}

/* A port on 127.0.0.1 that is listening (fd returned) or, with listen
 * false, one that was just closed. */
static int loopback_port(bool listening, int *fd_out)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 4) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
        abort();
    if (!listening) {
        close(fd);
        fd = -1;
    }
    *fd_out = fd;
    return ntohs(sa.sin_port);
}

static void test_tcp_check(void)
{
    int fd;
    char port[16];
    bt_fmt(port, sizeof port, "%d", loopback_port(true, &fd));
    json_t *res = NULL;
    char err[BT_ERRLEN];
    json_t *target = json_pack("{s:s, s:s}", "name", "localhost", "ip", "127.0.0.1");
    CHECK_INT(
        run("tcp_check",
            json_pack("{s:s, s:s, s:s}", "host", "localhost", "address", "127.0.0.1", "port", port),
            target, &res, err),
        BT_OK);
    json_t *data = json_object_get(res, "data");
    CHECK(json_is_true(json_object_get(data, "reachable")));
    CHECK_STR(json_string_value(json_object_get(data, "address")), "127.0.0.1");
    CHECK_INT(json_integer_value(json_object_get(data, "port")), strtol(port, NULL, 10));
    CHECK(json_object_get(data, "error") == NULL);
    CHECK(strncmp(text_of(res), "localhost (127.0.0.1) port ", 27) == 0 &&
          strstr(text_of(res), "is reachable"));
    json_decref(res);
    close(fd);

    bt_fmt(port, sizeof port, "%d", loopback_port(false, &fd));
    CHECK_INT(run("tcp_check", json_pack("{s:s, s:s}", "address", "127.0.0.1", "port", port), NULL,
                  &res, err),
              BT_OK);
    data = json_object_get(res, "data");
    CHECK(json_is_false(json_object_get(data, "reachable")));
    CHECK_STR(json_string_value(json_object_get(data, "error")), "connection refused");
    CHECK(strstr(text_of(res), "is not reachable from the baton host: connection refused") != NULL);
    json_decref(res);

    /* the address comes from the target when not given */
    CHECK_INT(run("tcp_check", json_pack("{s:s}", "port", port), target, &res, err), BT_OK);
    CHECK_STR(json_string_value(json_object_get(json_object_get(res, "data"), "address")),
              "127.0.0.1");
    json_decref(res);

    /* names are never resolved; ports are checked */
    CHECK_INT(run("tcp_check", json_pack("{s:s, s:s}", "address", "localhost", "port", "80"), NULL,
                  &res, err),
              BT_EINVAL);
    CHECK(strstr(err, "IPv4 address") != NULL);
    CHECK_INT(run("tcp_check", json_pack("{s:s, s:s}", "address", "127.0.0.1", "port", "70000"),
                  NULL, &res, err),
              BT_EINVAL);
    json_decref(target);
}

static void *count_worker(void *arg)
{
    int *ok = arg;
    for (int i = 0; i < 10; i++) {
        json_t *res = NULL, *in = json_pack("{s:s}", "os", i % 2 ? "windows" : "linux");
        char err[BT_ERRLEN];
        enum bt_err e =
            bt_connectors_invoke(g_conn, tool("asset_count"), in, NULL, &res, err, sizeof err);
        json_decref(in);
        if (e == BT_OK && count_of(res) == (i % 2 ? 7 : 17))
            (*ok)++;
        json_decref(res);
    }
    return NULL;
}

static void test_threads(void)
{
    enum { N = 4 };
    pthread_t th[N];
    int ok[N] = {0};
    for (int i = 0; i < N; i++)
        pthread_create(&th[i], NULL, count_worker, &ok[i]);
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        CHECK_INT(ok[i], 10);
    }
}

static void test_no_store(void)
{
    bt_diag *d = bt_diag_new();
    bt_connectors *c = bt_connectors_new(g_cfg, NULL, d);
    json_t *res = NULL;
    char err[BT_ERRLEN];
    CHECK_INT(bt_connectors_invoke(c, tool("asset_count"), NULL, NULL, &res, err, sizeof err),
              BT_EUNAVAIL);
    CHECK(res == NULL);
    bt_connectors_free(c);
    bt_diag_free(d);
}

int main(void)
{
    setup();
    RUN(test_count_all);
    RUN(test_count_filters);
    RUN(test_list);
    RUN(test_get);
    RUN(test_tcp_check);
    RUN(test_threads);
    RUN(test_no_store);
    teardown();
    return bt_test_finish();
}
