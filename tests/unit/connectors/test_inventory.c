/* Unit tests for connectors/inventory.c: the shipped inventory and the
 * checks that report a bad one as file:line: assets[i].key. */
#include <stdlib.h>
#include <string.h>

#include "conn_test.h"
#include "connectors/connectors.h"
#include "test.h"

static size_t count_where(const json_t *assets, const char *k1, const char *v1, const char *k2,
                          const char *v2)
{
    size_t n = 0;
    for (size_t i = 0; i < json_array_size(assets); i++) {
        json_t *a = json_array_get(assets, i);
        const char *a1 = json_string_value(json_object_get(a, k1));
        const char *a2 = k2 ? json_string_value(json_object_get(a, k2)) : NULL;
        if (a1 && strcmp(a1, v1) == 0 && (!k2 || (a2 && strcmp(a2, v2) == 0)))
            n++;
    }
    return n;
}

static const json_t *by_name(const json_t *assets, const char *name)
{
    for (size_t i = 0; i < json_array_size(assets); i++) {
        json_t *a = json_array_get(assets, i);
        if (strcmp(json_string_value(json_object_get(a, "name")), name) == 0)
            return a;
    }
    return NULL;
}

static void test_shipped_inventory(void)
{
    /* Only this module's diagnostics count: other files of config/ belong
     * to other modules' tests. */
    bt_diag *load = bt_diag_new(), *d = bt_diag_new();
    bt_config *cfg = bt_config_load(BT_SOURCE_DIR "/config", load);
    json_t *assets = bt_connectors_inventory(cfg, d);
    conn_dump_diag(d);
    CHECK_INT(bt_diag_count(d), 0);
    CHECK(json_is_array(assets));
    CHECK_INT(json_array_size(assets), 24);
    CHECK_INT(count_where(assets, "os", "windows", "role", "workstation"), 6);
    CHECK_INT(count_where(assets, "os", "windows", NULL, NULL), 7);
    CHECK_INT(count_where(assets, "connection", "local", NULL, NULL), 1);
    CHECK_INT(count_where(assets, "status", "inactive", NULL, NULL), 1);
    const json_t *lh = by_name(assets, "localhost");
    CHECK(lh != NULL);
    CHECK_STR(json_string_value(json_object_get(lh, "hostname")), "localhost");
    CHECK_STR(json_string_value(json_object_get(lh, "ip")), "127.0.0.1");
    const json_t *db = by_name(assets, "db-prd-01");
    CHECK(db && json_integer_value(json_object_get(db, "ram_gb")) == 64);
    CHECK_STR(json_string_value(json_object_get(db, "hostname")), "db-prd-01.example.internal");
    /* services is always present after loading */
    for (size_t i = 0; i < json_array_size(assets); i++)
        CHECK(json_is_array(json_object_get(json_array_get(assets, i), "services")));
    json_decref(assets);
    bt_config_free(cfg);
    bt_diag_free(load);
    bt_diag_free(d);
}

static const char bad_inventory[] = "assets:\n"                     /* 1 */
                                    "  - name: a-01\n"              /* 2 */
                                    "    hostname: a-01.example\n"  /* 3 */
                                    "    ip: 10.0.0.1\n"            /* 4 */
                                    "    os: linux\n"               /* 5 */
                                    "    os_version: 'Debian 12'\n" /* 6 */
                                    "    role: web\n"               /* 7 */
                                    "    environment: prod\n"       /* 8 */
                                    "    status: active\n"          /* 9 */
                                    "    datacenter: dc1\n"         /* 10 */
                                    "    tags: []\n"                /* 11 */
                                    "    cpu: 2\n"                  /* 12 */
                                    "    ram_gb: 4\n"               /* 13 */
                                    "    connection: ssh\n"         /* 14 */
                                    "  - name: a-01\n"              /* 15 */
                                    "    hostname: a-02.example\n"  /* 16 */
                                    "    ip: 10.0.0.256\n"          /* 17 */
                                    "    os: windows\n"             /* 18 */
                                    "    os_version: '11'\n"        /* 19 */
                                    "    role: workstation\n"       /* 20 */
                                    "    environment: dev\n"        /* 21 */
                                    "    status: active\n"          /* 22 */
                                    "    datacenter: hq\n"          /* 23 */
                                    "    tags: [x]\n"               /* 24 */
                                    "    cpu: 2\n"                  /* 25 */
                                    "    ram_gb: 4\n"               /* 26 */
                                    "    connection: winrm\n"       /* 27 */
                                    "  - name: a-03\n"              /* 28 */
                                    "    hostname: a-03.example\n"  /* 29 */
                                    "    ip: 10.0.0.1\n"            /* 30 */
                                    "    os: linux\n"               /* 31 */
                                    "    os_version: 'Debian 12'\n" /* 32 */
                                    "    role: web\n"               /* 33 */
                                    "    environment: dev\n"        /* 34 */
                                    "    status: active\n"          /* 35 */
                                    "    tags: [x, x]\n"            /* 36 */
                                    "    cpu: '2'\n"                /* 37 */
                                    "    ram_gb: 4\n"               /* 38 */
                                    "    connection: telnet\n"      /* 39 */
                                    "    colour: blue\n";           /* 40 */

static void test_bad_inventory(void)
{
    char *dir = conn_config_dir(NULL, NULL, bad_inventory);
    bt_diag *d = bt_diag_new();
    bt_config *cfg = bt_config_load(dir, d);
    CHECK_INT(bt_diag_count(d), 0);
    json_t *assets = bt_connectors_inventory(cfg, d);
    CHECK(assets == NULL);
    char file[300];
    bt_fmt(file, sizeof file, "%s/inventory.yaml", dir);
    conn_dump_diag(d);
    CHECK(DIAG_HAS(d, file,
                   ":8: assets[0].environment: must be one of production, staging, dev, "
                   "found 'prod'"));
    CHECK(DIAG_HAS(d, ":17: assets[1].ip: must be a dotted IPv4 address", "'10.0.0.256'"));
    CHECK(DIAG_HAS(d, ":15: assets[1].name: duplicate name 'a-01' (also assets[0], line 2)"));
    CHECK(DIAG_HAS(d, ":30: assets[2].ip: duplicate ip '10.0.0.1'"));
    CHECK(DIAG_HAS(d, ":28: assets[2].datacenter: required, missing"));
    CHECK(DIAG_HAS(d, ":36: assets[2].tags: 'x' is listed twice"));
    CHECK(DIAG_HAS(d, ":37: assets[2].cpu: must be an integer, found a string"));
    CHECK(DIAG_HAS(d, ":39: assets[2].connection: must be one of local, ssh, winrm, none, "
                      "found 'telnet'"));
    CHECK(DIAG_HAS(d, ":40: assets[2].colour: unknown key"));
    CHECK_INT(bt_diag_count(d), 9);
    bt_config_free(cfg);
    bt_diag_free(d);
    conn_rmtree(dir);
    free(dir);
}

static void test_inventory_shape(void)
{
    const char *cases[][2] = {
        {"assets: {}\n", "assets: must be a list"},
        {"things: []\n", "assets: required, missing"},
        {"assets:\n  - just-a-name\n", "assets[0]: must be a mapping, found a string"},
        {"assets: []\nextra: 1\n", "extra: unknown key"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *dir = conn_config_dir(NULL, NULL, cases[i][0]);
        bt_diag *d = bt_diag_new();
        bt_config *cfg = bt_config_load(dir, d);
        json_t *assets = bt_connectors_inventory(cfg, d);
        CHECK(assets == NULL);
        CHECK_MSG(DIAG_HAS(d, cases[i][1]), "case %zu", i);
        conn_dump_diag(d);
        bt_config_free(cfg);
        bt_diag_free(d);
        conn_rmtree(dir);
        free(dir);
    }
    /* an empty inventory is valid */
    char *dir = conn_config_dir(NULL, NULL, "assets: []\n");
    bt_diag *d = bt_diag_new();
    bt_config *cfg = bt_config_load(dir, d);
    json_t *assets = bt_connectors_inventory(cfg, d);
    CHECK(json_is_array(assets) && json_array_size(assets) == 0);
    CHECK_INT(bt_diag_count(d), 0);
    json_decref(assets);
    bt_config_free(cfg);
    bt_diag_free(d);
    conn_rmtree(dir);
    free(dir);
}

int main(void)
{
    RUN(test_shipped_inventory);
    RUN(test_bad_inventory);
    RUN(test_inventory_shape);
    return bt_test_finish();
}
