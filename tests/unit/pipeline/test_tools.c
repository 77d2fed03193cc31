/* Unit tests for pipeline/tools.c: the tool catalog and input validation. */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bot/conf.h"
#include "connectors/connectors.h"
#include "pipeline/tools.h"
#include "test.h"

static bt_config *cfg;
static bt_connectors *conns;
static bt_tools *tools;

static void setup(void)
{
    bt_diag *d = bt_diag_new();
    cfg = bt_config_load(BT_SOURCE_DIR "/config", d);
    conns = bt_connectors_new(cfg, ":memory:", d);
    tools = conns ? bt_tools_new(cfg, conns, d) : NULL;
    for (size_t i = 0; i < bt_diag_count(d); i++)
        fprintf(stderr, "  %s\n", bt_diag_get(d, i));
    CHECK_INT(bt_diag_count(d), 0);
    CHECK(tools != NULL);
    bt_diag_free(d);
}

static json_t *validate(const char *tool, const char *key, const char *value, char *err)
{
    json_t *in = json_pack("{s:s, s:s}", "host", "localhost", key, value);
    json_t *out = bt_tools_validate(tools, tool, in, NULL, err, BT_ERRLEN);
    json_decref(in);
    return out;
}

static void test_valid_inputs_pass(void)
{
    char err[BT_ERRLEN];
    json_t *out = validate("service_status", "service", "nginx", err);
    CHECK_MSG(out != NULL, "%s", err);
    CHECK_STR(json_string_value(json_object_get(out, "service")), "nginx");
    json_decref(out);
    out = validate("service_restart", "service", "getty@tty1", err);
    CHECK_MSG(out != NULL, "%s", err);
    json_decref(out);
}

static void test_hostile_values_refused(void)
{
    static const char *const bad[] = {
        "web-01; rm -rf /", "$(id)", "`id`", "nginx\n", "a\nb", "-rf", "", "nginx x",
        "../../etc/passwd", "x|y",   "a&&b", "n'x",     NULL};
    char err[BT_ERRLEN];
    for (size_t i = 0; bad[i]; i++) {
        json_t *out = validate("service_restart", "service", bad[i], err);
        CHECK_MSG(out == NULL, "value %zu was accepted", i);
        json_decref(out);
    }
    json_t *out = validate("log_tail", "path", "/var/log/../../etc/shadow", err);
    CHECK(out == NULL);
    json_decref(out);
    out = validate("log_tail", "path", "/var/log/syslog", err);
    CHECK_MSG(out != NULL, "%s", err);
    /* the default fills the optional input */
    CHECK_STR(json_string_value(json_object_get(out, "lines")), "50");
    json_decref(out);
    out = validate("tcp_check", "port", "65536", err);
    CHECK(out == NULL);
    json_decref(out);
}

static void test_error_names_input(void)
{
    char err[BT_ERRLEN];
    json_t *out = validate("service_restart", "service", "$(id)", err);
    CHECK(out == NULL);
    CHECK_MSG(strstr(err, "\"$(id)\" is not a valid service for service_restart") != NULL, "%s",
              err);
}

static void test_missing_and_unknown(void)
{
    char err[BT_ERRLEN];
    json_t *missing = NULL;
    json_t *in = json_pack("{s:s}", "host", "localhost");
    json_t *out = bt_tools_validate(tools, "service_restart", in, &missing, err, sizeof err);
    CHECK(out == NULL);
    CHECK(missing && json_array_size(missing) == 1);
    CHECK_STR(json_string_value(json_array_get(missing, 0)), "service");
    json_decref(missing);
    json_decref(in);

    in = json_pack("{s:s, s:s}", "host", "localhost", "shell", "yes");
    out = bt_tools_validate(tools, "disk_space", in, NULL, err, sizeof err);
    CHECK(out == NULL);
    CHECK(strstr(err, "no input named 'shell'") != NULL);
    json_decref(in);

    out = bt_tools_validate(tools, "no_such_tool", NULL, NULL, err, sizeof err);
    CHECK(out == NULL);
}

static void test_inputs_from_set(void)
{
    const json_t *def = bt_tools_get(tools, "asset_count");
    CHECK(def != NULL);
    CHECK(json_object_get(json_object_get(def, "inputs"), "environment") != NULL);
    CHECK(json_object_get(def, "inputs_from") == NULL);
}

/* A broken tools.yaml: every problem reported with file, line and key. */
/* A catalog built from tools_yaml next to the shipped baton.yaml and
 * inventory; every diagnostic is appended to diags. Free with
 * catalog_free. */
struct catalog {
    char dir[32];
    bt_config *cfg;
    bt_connectors *conns;
    bt_tools *tools;
};

static void catalog_load(struct catalog *k, const char *tools_yaml, bt_buf *diags)
{
    bt_strlcpy(k->dir, "/tmp/bt-tools-XXXXXX", sizeof k->dir);
    CHECK(mkdtemp(k->dir) != NULL);
    char path[512];
    static const char *const copied[] = {"baton.yaml", "inventory.yaml", NULL};
    for (size_t i = 0; copied[i]; i++) {
        char *text = NULL;
        char err[BT_ERRLEN];
        bt_fmt(path, sizeof path, "%s/%s", BT_SOURCE_DIR "/config", copied[i]);
        CHECK(bt_read_file(path, 1 << 22, &text, NULL, err, sizeof err) == BT_OK);
        bt_fmt(path, sizeof path, "%s/%s", k->dir, copied[i]);
        FILE *f = fopen(path, "w");
        fputs(text, f);
        fclose(f);
        free(text);
    }
    bt_fmt(path, sizeof path, "%s/tools.yaml", k->dir);
    FILE *f = fopen(path, "w");
    fputs(tools_yaml, f);
    fclose(f);
    bt_fmt(path, sizeof path, "%s/intents", k->dir);
    mkdir(path, 0700);
    bt_diag *d = bt_diag_new();
    k->cfg = bt_config_load(k->dir, d);
    bt_diag_free(d);
    d = bt_diag_new();
    k->conns = bt_connectors_new(k->cfg, ":memory:", d);
    CHECK(k->conns != NULL);
    k->tools = bt_tools_new(k->cfg, k->conns, d);
    for (size_t i = 0; i < bt_diag_count(d); i++)
        bt_buf_printf(diags, "%s\n", bt_diag_get(d, i));
    bt_diag_free(d);
}

static void catalog_free(struct catalog *k)
{
    bt_tools_free(k->tools);
    bt_connectors_free(k->conns);
    bt_config_free(k->cfg);
    char path[512];
    static const char *const files[] = {"baton.yaml", "inventory.yaml", "tools.yaml", NULL};
    for (size_t i = 0; files[i]; i++) {
        bt_fmt(path, sizeof path, "%s/%s", k->dir, files[i]);
        unlink(path);
    }
    bt_fmt(path, sizeof path, "%s/intents", k->dir);
    rmdir(path);
    rmdir(k->dir);
}

static void test_catalog_errors(void)
{
    struct catalog k;
    bt_buf all = BT_BUF_INIT(0);
    catalog_load(&k,
                 "tools:\n"
                 "  - name: a\n"
                 "    connector: nowhere\n"
                 "    operation: x\n"
                 "    risk: extreme\n"
                 "    timeout_s: 0\n"
                 "    inputs:\n"
                 "      v: {pattern: '([a-z'}\n"
                 "  - name: a\n"
                 "    connector: inventory\n"
                 "    operation: count_assets\n"
                 "    risk: low\n"
                 "    compensate: missing_tool\n"
                 "    colour: blue\n",
                 &all);
    CHECK(k.tools == NULL);
    bt_buf_puts(&all, "");
    CHECK_MSG(strstr(all.data, "tools.yaml:5: risk: must be low, medium, high or critical") != NULL,
              "%s", all.data);
    CHECK_MSG(strstr(all.data, "tools.yaml:6: timeout_s: must be between 1 and 3600") != NULL, "%s",
              all.data);
    CHECK_MSG(strstr(all.data, "tools.yaml:8: pattern: input v of tool a: cannot compile") != NULL,
              "%s", all.data);
    CHECK_MSG(strstr(all.data, "connector 'nowhere'") != NULL, "%s", all.data);
    CHECK_MSG(strstr(all.data, "tools.yaml:9: name: duplicate tool name 'a'") != NULL, "%s",
              all.data);
    CHECK_MSG(strstr(all.data, "tools.yaml:14: colour: unknown key") != NULL, "%s", all.data);
    bt_buf_free(&all);
    catalog_free(&k);
}

/* via: the same tool through another connector for assets reached another
 * way; the target's connection picks the definition. */
static void test_via_routes_by_connection(void)
{
    static const char *const tool =
        "tools:\n"
        "  - name: up\n"
        "    connector: local\n"
        "    operation: command\n"
        "    command: [uptime]\n"
        "    risk: low\n"
        "    read_only: true\n"
        "    timeout_s: 5\n"
        "    inputs:\n"
        "      host: {required: true, pattern: '[a-z0-9.-]+'}\n"
        "    target: host\n"
        "    via:\n"
        "      ssh: {connector: local, operation: command, command: [df, -h], timeout_s: 9}\n";
    struct catalog k;
    bt_buf all = BT_BUF_INIT(0);
    catalog_load(&k, tool, &all);
    CHECK_MSG(k.tools != NULL, "%s", all.data ? all.data : "");
    if (k.tools) {
        json_t *ssh = json_pack("{s:s, s:s}", "name", "web-01", "connection", "ssh");
        json_t *local = json_pack("{s:s, s:s}", "name", "localhost", "connection", "local");
        const json_t *v = bt_tools_for(k.tools, "up", ssh);
        CHECK_STR(json_string_value(json_array_get(json_object_get(v, "command"), 0)), "df");
        CHECK_INT(json_integer_value(json_object_get(v, "timeout_s")), 9);
        CHECK_STR(json_string_value(json_object_get(v, "target")), "host"); /* the tool's */
        CHECK(json_object_get(json_object_get(v, "inputs"), "host") != NULL);
        CHECK(json_object_get(v, "via") == NULL);
        v = bt_tools_for(k.tools, "up", local);
        CHECK_STR(json_string_value(json_array_get(json_object_get(v, "command"), 0)), "uptime");
        CHECK(bt_tools_for(k.tools, "up", NULL) == bt_tools_get(k.tools, "up"));
        CHECK(bt_tools_get(k.tools, "up@ssh") == NULL);
        json_decref(ssh);
        json_decref(local);
    }
    bt_buf_free(&all);
    catalog_free(&k);

    /* Every mistake in a via entry is reported. */
    bt_buf bad = BT_BUF_INIT(0);
    char *text = bt_asprintf("%s      telnet: {connector: local}\n"
                             "      winrm: {connector: nowhere, operation: command}\n"
                             "      local: {operation: command, colour: red}\n",
                             tool);
    catalog_load(&k, text, &bad);
    free(text);
    CHECK(k.tools == NULL);
    bt_buf_puts(&bad, "");
    CHECK_MSG(strstr(bad.data, "via.telnet: not a connection") != NULL, "%s", bad.data);
    CHECK_MSG(strstr(bad.data, "connector 'nowhere'") != NULL, "%s", bad.data);
    CHECK_MSG(strstr(bad.data, "colour: unknown key") != NULL, "%s", bad.data);
    CHECK_MSG(strstr(bad.data, "connector: required") != NULL, "%s", bad.data);
    bt_buf_free(&bad);
    catalog_free(&k);
}

int main(void)
{
    RUN(setup);
    if (tools) {
        RUN(test_valid_inputs_pass);
        RUN(test_hostile_values_refused);
        RUN(test_error_names_input);
        RUN(test_missing_and_unknown);
        RUN(test_inputs_from_set);
    }
    RUN(test_catalog_errors);
    RUN(test_via_routes_by_connection);
    bt_tools_free(tools);
    bt_connectors_free(conns);
    bt_config_free(cfg);
    return bt_test_finish();
}
