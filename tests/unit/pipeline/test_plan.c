/* Unit tests for pipeline/plan.c: building plans from decisions. */
#include <stdlib.h>

#include "bot/conf.h"
#include "connectors/connectors.h"
#include "pipeline/plan.h"
#include "pipeline/tools.h"
#include "test.h"

static bt_config *cfg;
static bt_connectors *conns;
static bt_tools *tools;

static json_t *asset(const char *name, const char *env, const char *ip)
{
    return json_pack("{s:s, s:s, s:s}", "name", name, "environment", env, "ip", ip);
}

static json_t *two_targets(void)
{
    json_t *t = json_array();
    json_array_append_new(t, asset("web-01", "dev", "10.20.1.11"));
    json_array_append_new(t, asset("web-prd-01", "production", "10.20.3.11"));
    return t;
}

static json_t *intent(const char *yaml_json)
{
    json_error_t e;
    json_t *in = json_loads(yaml_json, 0, &e);
    if (!in)
        fprintf(stderr, "bad test intent: %s\n", e.text);
    return in;
}

static enum bt_plan_outcome build(const json_t *in, const json_t *decision, const json_t *targets,
                                  json_t **plan, json_t **question, char *err)
{
    return bt_plan_build(tools, in, decision, targets, plan, question, err, BT_ERRLEN);
}

static void test_per_target_steps(void)
{
    json_t *in = intent("{\"name\":\"service_restart\",\"description\":\"Restart a service\","
                        "\"targets\":\"required\",\"requires\":[\"service\"],"
                        "\"plan\":[{\"id\":\"restart\",\"tool\":\"service_restart\","
                        "\"inputs\":{\"host\":\"{target}\",\"service\":\"{service}\"}}]}");
    json_t *dec = json_pack("{s:{s:s}}", "entities", "service", "nginx");
    json_t *targets = two_targets();
    json_t *plan, *q;
    char err[BT_ERRLEN];
    CHECK_INT(build(in, dec, targets, &plan, &q, err), BT_PLAN_OK);
    json_t *steps = json_object_get(plan, "steps");
    CHECK_INT(json_array_size(steps), 2);
    json_t *s1 = json_array_get(steps, 1);
    CHECK_STR(json_string_value(json_object_get(s1, "target")), "web-prd-01");
    CHECK_STR(json_string_value(json_object_get(s1, "environment")), "production");
    CHECK_STR(json_string_value(json_object_get(json_object_get(s1, "inputs"), "service")),
              "nginx");
    CHECK_STR(json_string_value(json_object_get(plan, "risk")), "medium");
    CHECK_STR(json_string_value(json_object_get(plan, "summary")),
              "Restart a service: web-01, web-prd-01");
    CHECK_INT(json_array_size(json_object_get(plan, "targets")), 2);
    CHECK(json_is_null(json_object_get(s1, "compensate")));
    json_decref(plan);
    json_decref(dec);
    json_decref(targets);
    json_decref(in);
}

static void test_dependencies_per_target(void)
{
    json_t *in =
        intent("{\"name\":\"app_deploy\",\"targets\":\"required\",\"plan\":["
               "{\"id\":\"pre\",\"tool\":\"service_status\",\"inputs\":{\"host\":\"{target}\","
               "\"service\":\"{app}\"}},"
               "{\"id\":\"install\",\"tool\":\"package_install\",\"depends_on\":[\"pre\"],"
               "\"inputs\":{\"host\":\"{target}\",\"app\":\"{app}\",\"version\":\"{version}\"}},"
               "{\"id\":\"restart\",\"tool\":\"service_restart\",\"depends_on\":[\"install\"],"
               "\"inputs\":{\"host\":\"{target}\",\"service\":\"{app}\"}}]}");
    json_t *dec = json_pack("{s:{s:s, s:s}}", "entities", "app", "billing-api", "version", "1.2.3");
    json_t *targets = two_targets();
    json_t *plan, *q;
    char err[BT_ERRLEN];
    CHECK_INT(build(in, dec, targets, &plan, &q, err), BT_PLAN_OK);
    json_t *steps = json_object_get(plan, "steps");
    CHECK_INT(json_array_size(steps), 6);
    /* install on target 2 (index 3) depends on pre on target 2 (index 1) only */
    json_t *deps = json_object_get(json_array_get(steps, 3), "depends_on");
    CHECK_INT(json_array_size(deps), 1);
    CHECK_INT(json_integer_value(json_array_get(deps, 0)), 1);
    CHECK_STR(json_string_value(
                  json_object_get(json_object_get(json_array_get(steps, 2), "inputs"), "version")),
              "1.2.3");
    CHECK_STR(json_string_value(json_object_get(plan, "risk")), "high");
    json_decref(plan);
    json_decref(dec);
    json_decref(targets);
    json_decref(in);
}

static void test_clarify_missing_entity_and_host(void)
{
    json_t *in = intent("{\"name\":\"service_restart\",\"targets\":\"required\","
                        "\"requires\":[\"service\"],\"ask\":{\"service\":\"Which service "
                        "should I restart?\"},\"plan\":[{\"id\":\"r\",\"tool\":"
                        "\"service_restart\",\"inputs\":{\"host\":\"{target}\","
                        "\"service\":\"{service}\"}}]}");
    json_t *none = json_pack("{s:{}}", "entities");
    json_t *targets = two_targets();
    json_t *plan, *q;
    char err[BT_ERRLEN];
    CHECK_INT(build(in, none, targets, &plan, &q, err), BT_PLAN_CLARIFY);
    CHECK_STR(json_string_value(json_object_get(q, "question")), "Which service should I restart?");
    json_decref(q);

    json_t *dec = json_pack("{s:{s:s}}", "entities", "service", "nginx");
    json_t *empty = json_array();
    CHECK_INT(build(in, dec, empty, &plan, &q, err), BT_PLAN_CLARIFY);
    CHECK_STR(json_string_value(json_object_get(q, "question")), "On which host?");
    json_decref(q);

    json_t *unres =
        json_pack("{s:{s:s}, s:[s]}", "entities", "service", "nginx", "unresolved", "web-99");
    CHECK_INT(build(in, unres, empty, &plan, &q, err), BT_PLAN_CLARIFY);
    CHECK_MSG(strstr(json_string_value(json_object_get(q, "question")), "web-99") != NULL, "%s",
              json_string_value(json_object_get(q, "question")));
    json_decref(q);
    json_decref(unres);
    json_decref(empty);
    json_decref(dec);
    json_decref(none);
    json_decref(targets);
    json_decref(in);
}

static void test_invalid_value_refused(void)
{
    json_t *in = intent("{\"name\":\"service_restart\",\"targets\":\"required\","
                        "\"plan\":[{\"id\":\"r\",\"tool\":\"service_restart\",\"inputs\":"
                        "{\"host\":\"{target}\",\"service\":\"{service}\"}}]}");
    json_t *dec = json_pack("{s:{s:s}}", "entities", "service", "nginx; rm -rf /");
    json_t *targets = two_targets();
    json_t *plan, *q;
    char err[BT_ERRLEN];
    CHECK_INT(build(in, dec, targets, &plan, &q, err), BT_PLAN_INVALID);
    CHECK_MSG(strstr(err, "is not a valid service") != NULL, "%s", err);
    json_decref(dec);
    json_decref(targets);
    json_decref(in);
}

static void test_compensation_and_target_fields(void)
{
    json_t *in = intent("{\"name\":\"x\",\"targets\":\"required\",\"plan\":["
                        "{\"id\":\"stop\",\"tool\":\"service_stop\",\"inputs\":"
                        "{\"host\":\"{target}\",\"service\":\"{service}\"}},"
                        "{\"id\":\"ping\",\"tool\":\"ping\",\"inputs\":"
                        "{\"host\":\"{target}\",\"address\":\"{target.ip}\"}}]}");
    json_t *dec = json_pack("{s:{s:s}}", "entities", "service", "cron");
    json_t *targets = json_array();
    json_array_append_new(targets, asset("web-01", "dev", "10.20.1.11"));
    json_t *plan, *q;
    char err[BT_ERRLEN];
    CHECK_INT(build(in, dec, targets, &plan, &q, err), BT_PLAN_OK);
    json_t *steps = json_object_get(plan, "steps");
    json_t *comp = json_object_get(json_array_get(steps, 0), "compensate");
    CHECK_STR(json_string_value(json_object_get(comp, "tool")), "service_start");
    CHECK_STR(json_string_value(json_object_get(json_object_get(comp, "inputs"), "service")),
              "cron");
    CHECK_STR(json_string_value(
                  json_object_get(json_object_get(json_array_get(steps, 1), "inputs"), "address")),
              "10.20.1.11");
    /* the plan hash follows the content */
    char h1[65], h2[65];
    char *c1 = bt_plan_canonical(plan, h1);
    json_t *copy = json_deep_copy(plan);
    char *c2 = bt_plan_canonical(copy, h2);
    CHECK_STR(h1, h2);
    free(c2);
    json_object_set_new(
        json_object_get(json_array_get(json_object_get(copy, "steps"), 0), "inputs"), "service",
        json_string("sshd"));
    c2 = bt_plan_canonical(copy, h2);
    CHECK(strcmp(h1, h2) != 0);
    free(c1);
    free(c2);
    json_decref(copy);
    json_decref(plan);
    json_decref(dec);
    json_decref(targets);
    json_decref(in);
}

static void test_no_plan_and_unknown_tool(void)
{
    json_t *in = intent("{\"name\":\"help\"}");
    json_t *dec = json_pack("{s:{}}", "entities");
    json_t *plan, *q;
    char err[BT_ERRLEN];
    CHECK_INT(build(in, dec, NULL, &plan, &q, err), BT_PLAN_NONE);
    json_decref(in);
    in = intent("{\"name\":\"bad\",\"plan\":[{\"id\":\"a\",\"tool\":\"teleport\"}]}");
    CHECK_INT(build(in, dec, NULL, &plan, &q, err), BT_PLAN_INVALID);
    CHECK(strstr(err, "teleport") != NULL);
    json_decref(in);
    json_decref(dec);
}

static void test_filters_without_targets(void)
{
    json_t *in = intent("{\"name\":\"asset_count\",\"targets\":\"none\",\"plan\":[{\"id\":"
                        "\"count\",\"tool\":\"asset_count\",\"inputs\":{\"os\":\"{os}\","
                        "\"environment\":\"{environment}\"}}]}");
    json_t *dec = json_pack("{s:{s:s}}", "entities", "os", "windows");
    json_t *plan, *q;
    char err[BT_ERRLEN];
    CHECK_INT(build(in, dec, NULL, &plan, &q, err), BT_PLAN_OK);
    json_t *inputs = json_object_get(json_array_get(json_object_get(plan, "steps"), 0), "inputs");
    CHECK_STR(json_string_value(json_object_get(inputs, "os")), "windows");
    CHECK(json_object_get(inputs, "environment") == NULL);
    CHECK_STR(json_string_value(json_object_get(plan, "risk")), "low");
    json_decref(plan);
    json_decref(dec);
    json_decref(in);
}

int main(void)
{
    bt_diag *d = bt_diag_new();
    cfg = bt_config_load(BT_SOURCE_DIR "/config", d);
    conns = cfg ? bt_connectors_new(cfg, ":memory:", d) : NULL;
    tools = conns ? bt_tools_new(cfg, conns, d) : NULL;
    for (size_t i = 0; i < bt_diag_count(d); i++)
        fprintf(stderr, "  %s\n", bt_diag_get(d, i));
    bt_diag_free(d);
    CHECK(tools != NULL);
    if (tools) {
        RUN(test_per_target_steps);
        RUN(test_dependencies_per_target);
        RUN(test_clarify_missing_entity_and_host);
        RUN(test_invalid_value_refused);
        RUN(test_compensation_and_target_fields);
        RUN(test_no_plan_and_unknown_tool);
        RUN(test_filters_without_targets);
    }
    bt_tools_free(tools);
    bt_connectors_free(conns);
    bt_config_free(cfg);
    return bt_test_finish();
}
