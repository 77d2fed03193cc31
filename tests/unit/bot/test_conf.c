/* Unit tests for bot/conf.c: YAML to jansson with lines, diagnostics, checks. */
#include <stdlib.h>

#include "bot/conf.h"
#include "bot/util.h"
#include "test.h"

static bt_yaml_doc *parse(const char *text, bt_diag *d)
{
    return bt_yaml_parse("t.yaml", text, strlen(text), d);
}

static void test_scalars_and_lines(void)
{
    bt_diag *d = bt_diag_new();
    bt_yaml_doc *doc = parse("a: 1\n"
                             "b: 2.5\n"
                             "c: true\n"
                             "d: ~\n"
                             "e: '7'\n"
                             "f: hello world\n"
                             "g:\n"
                             "  - x\n"
                             "  - {k: v}\n",
                             d);
    CHECK(doc != NULL);
    CHECK_INT(bt_diag_count(d), 0);
    json_t *r = bt_yaml_root(doc);
    CHECK(json_is_integer(json_object_get(r, "a")));
    CHECK(json_is_real(json_object_get(r, "b")));
    CHECK(json_is_true(json_object_get(r, "c")));
    CHECK(json_is_null(json_object_get(r, "d")));
    CHECK_STR(json_string_value(json_object_get(r, "e")), "7");
    CHECK_STR(json_string_value(json_object_get(r, "f")), "hello world");
    json_t *g = json_object_get(r, "g");
    CHECK_INT(json_array_size(g), 2);
    CHECK_INT(bt_yaml_line(doc, g), 8);
    CHECK_INT(bt_yaml_line(doc, json_array_get(g, 1)), 9);
    CHECK_INT(bt_yaml_key_line(doc, r, "c"), 3); /* singleton: the key's line */
    CHECK_INT(bt_yaml_key_line(doc, r, "f"), 6);
    bt_yaml_free(doc);
    bt_diag_free(d);
}

static void test_errors_name_file_and_line(void)
{
    bt_diag *d = bt_diag_new();
    CHECK(parse("a: 1\na: 2\n", d) == NULL);
    CHECK_INT(bt_diag_count(d), 1);
    CHECK_MSG(strstr(bt_diag_get(d, 0), "t.yaml:2:") != NULL, "%s", bt_diag_get(d, 0));
    CHECK(strstr(bt_diag_get(d, 0), "duplicate key") != NULL);
    bt_diag_free(d);

    d = bt_diag_new();
    CHECK(parse("a: [1, 2\nb: 3\n", d) == NULL);
    CHECK(bt_diag_count(d) == 1 && strstr(bt_diag_get(d, 0), "YAML syntax error") != NULL);
    bt_diag_free(d);

    d = bt_diag_new();
    CHECK(parse("a: &x 1\nb: *x\n", d) == NULL);
    CHECK(bt_diag_count(d) == 1 && strstr(bt_diag_get(d, 0), "anchors") != NULL);
    bt_diag_free(d);

    d = bt_diag_new();
    CHECK(parse("a: 1\n---\nb: 2\n", d) == NULL);
    CHECK(bt_diag_count(d) == 1 && strstr(bt_diag_get(d, 0), "one YAML document") != NULL);
    bt_diag_free(d);
}

static void test_depth_limit(void)
{
    bt_buf b = BT_BUF_INIT(0);
    for (int i = 0; i < 100; i++)
        bt_buf_puts(&b, "[");
    for (int i = 0; i < 100; i++)
        bt_buf_puts(&b, "]");
    bt_diag *d = bt_diag_new();
    CHECK(parse(b.data, d) == NULL);
    CHECK(bt_diag_count(d) == 1 && strstr(bt_diag_get(d, 0), "nesting") != NULL);
    bt_diag_free(d);
    bt_buf_free(&b);
}

static void test_check_helpers(void)
{
    bt_diag *d = bt_diag_new();
    bt_yaml_doc *doc = parse("name: web\nport: x\ncount: 500\nlist: 3\nextra: 1\n", d);
    json_t *r = bt_yaml_root(doc);
    CHECK_STR(bt_check_string(d, doc, r, "name", true), "web");
    long long n = 0;
    CHECK(!bt_check_int(d, doc, r, "port", true, 1, 65535, &n));
    CHECK(!bt_check_int(d, doc, r, "count", true, 1, 100, &n));
    CHECK(bt_check_array(d, doc, r, "list", true) == NULL);
    CHECK(bt_check_object(d, doc, r, "missing", true) == NULL);
    CHECK(bt_check_object(d, doc, r, "optional", false) == NULL);
    static const char *const allowed[] = {"name", "port", "count", "list", NULL};
    bt_check_keys(d, doc, r, allowed);
    CHECK_INT(bt_diag_count(d), 5);
    CHECK_STR(bt_diag_get(d, 0), "t.yaml:2: port: must be an integer, found a string");
    CHECK_STR(bt_diag_get(d, 1), "t.yaml:3: count: must be between 1 and 100, found 500");
    CHECK_STR(bt_diag_get(d, 2), "t.yaml:4: list: must be a list, found an integer");
    CHECK_STR(bt_diag_get(d, 3), "t.yaml:1: missing: required, missing");
    CHECK_STR(bt_diag_get(d, 4), "t.yaml:5: extra: unknown key");
    bt_yaml_free(doc);
    bt_diag_free(d);
}

static void test_shipped_config_parses(void)
{
    bt_diag *d = bt_diag_new();
    bt_config *cfg = bt_config_load(BT_SOURCE_DIR "/config", d);
    CHECK(cfg != NULL);
    for (size_t i = 0; i < bt_diag_count(d); i++)
        fprintf(stderr, "  %s\n", bt_diag_get(d, i));
    CHECK_INT(bt_diag_count(d), 0);
    CHECK(bt_config_main(cfg) && bt_config_tools(cfg) && bt_config_inventory(cfg));
    CHECK(bt_config_intent_count(cfg) > 0);
    CHECK_STR(json_string_value(bt_config_get(cfg, "store.location")), "var/baton.db");
    CHECK(bt_config_get(cfg, "store.nope") == NULL);
    bt_config_free(cfg);
    bt_diag_free(d);
}

static void test_missing_dir(void)
{
    bt_diag *d = bt_diag_new();
    CHECK(bt_config_load("/nonexistent/baton", d) == NULL);
    CHECK_INT(bt_diag_count(d), 1);
    bt_diag_free(d);
}

int main(void)
{
    RUN(test_scalars_and_lines);
    RUN(test_errors_name_file_and_line);
    RUN(test_depth_limit);
    RUN(test_check_helpers);
    RUN(test_shipped_config_parses);
    RUN(test_missing_dir);
    return bt_test_finish();
}
