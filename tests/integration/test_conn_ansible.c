/*
 * Integration tests for connectors/ansible.c: runs Debian's ansible-core for
 * real against this machine with the local connection (and, for the
 * unreachable case, over ssh to a closed port). Each real run costs ansible
 * about two seconds of start-up, so the cases share runs where they can.
 *
 * The test process is a child subreaper: anything ansible leaves running
 * after a call is re-parented to us, so "no leftover process" is checked
 * exactly with waitpid instead of by scanning /proc.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "connectors/conn_test.h"
#include "connectors/connectors.h"
#include "test.h"

#define ANSIBLE "/usr/bin/ansible"

static const char tools_yaml[] =
    "input_sets:\n"
    "  on_host:\n"
    "    host: {pattern: '^[a-z0-9.-]+$'}\n"
    "tools:\n"
    "  - {name: ping, connector: ans, operation: module, module: ansible.builtin.ping,\n"
    "     target: host, inputs_from: on_host, timeout_s: 60}\n"
    "  - {name: echo, connector: ans, operation: module, module: ansible.builtin.command,\n"
    "     args: {argv: [/usr/bin/echo, 'said-{word}']}, target: host, inputs_from: on_host,\n"
    "     inputs: {word: {}}, timeout_s: 60}\n"
    "  - {name: fail3, connector: ans, operation: module, module: ansible.builtin.command,\n"
    "     args: {argv: [/bin/sh, -c, 'echo to-stderr >&2; exit 3']}, target: host,\n"
    "     inputs_from: on_host, timeout_s: 60}\n"
    "  - {name: sleep, connector: ans, operation: module, module: ansible.builtin.command,\n"
    "     args: {argv: [/usr/bin/sleep, '{secs}']}, target: host, inputs_from: on_host,\n"
    "     inputs: {secs: {}}, timeout_s: 3}\n"
    "  - {name: env, connector: ans, operation: module, module: ansible.builtin.command,\n"
    "     args: {argv: [/usr/bin/env]}, target: host, inputs_from: on_host, timeout_s: 60}\n"
    "  - {name: nosuch, connector: ans, operation: module, module: ansible.builtin.no_such_thing,\n"
    "     target: host, inputs_from: on_host, timeout_s: 60}\n"
    "  - {name: greet, connector: ans, operation: playbook, playbook: greet.yml,\n"
    "     extra_vars: {greeting: '{word}', count: 2}, target: host, inputs_from: on_host,\n"
    "     inputs: {word: {}}, timeout_s: 60}\n"
    "  - {name: nohosts, connector: ans, operation: playbook, playbook: nohosts.yml,\n"
    "     target: host, inputs_from: on_host, timeout_s: 60}\n"
    "  - {name: absent_pb, connector: ans, operation: playbook, playbook: absent.yml,\n"
    "     target: host, inputs_from: on_host}\n"
    "  - {name: ssh_ping, connector: ans, operation: module, module: ansible.builtin.ping,\n"
    "     target: host, inputs_from: on_host, timeout_s: 20}\n"
    "  - {name: missing, connector: gone, operation: module, module: ansible.builtin.ping,\n"
    "     target: host, inputs_from: on_host}\n"
    "  - {name: long, connector: ans, operation: module, module: ansible.builtin.command,\n"
    "     args: {argv: [/usr/bin/seq, '1', '3000']}, output_max: 4096, target: host,\n"
    "     inputs_from: on_host, timeout_s: 60}\n"
    "  - {name: huge, connector: ans, operation: module, module: ansible.builtin.command,\n"
    "     args: {argv: [/usr/bin/seq, '1', '8000']}, output_max: 1024, target: host,\n"
    "     inputs_from: on_host, timeout_s: 60}\n"
    /* problems for check_tool, from tools[13] on */
    "  - {name: bad1, connector: ans, operation: module, module: ansible.builtin.command,\n"
    "     args: {argv: [echo, '{nope}']}, target: host, inputs_from: on_host}\n"
    "  - {name: bad2, connector: ans, operation: module, module: 'Ansible/Ping',\n"
    "     target: host, inputs_from: on_host}\n"
    "  - {name: bad3, connector: ans, operation: playbook, playbook: ../etc/evil.yml,\n"
    "     target: host, inputs_from: on_host}\n"
    "  - {name: bad4, connector: ans, operation: run, target: host, inputs_from: on_host}\n"
    "  - {name: bad5, connector: ans, operation: playbook, playbook: greet.yml,\n"
    "     extra_vars: {ansible_connection: ssh}, target: host, inputs_from: on_host}\n"
    "  - {name: bad6, connector: ans, operation: module, module: ansible.builtin.ping,\n"
    "     command: [ping], inputs_from: on_host}\n"
    "  - {name: bad7, connector: ans, operation: module, module: ansible.builtin.ping,\n"
    "     playbook: greet.yml, target: host, inputs_from: on_host}\n"
    "  - {name: jinja, connector: ans, operation: module, module: ansible.builtin.debug,\n"
    "     args: {msg: '{{ x }} {% if {nope} %}{# {nope} #}{% endif %} {word}'}, target: host,\n"
    "     inputs_from: on_host, inputs: {word: {}}}\n"
    "  - {name: secret_ping, connector: secrets, operation: module, module: ansible.builtin.ping,\n"
    "     target: host, inputs_from: on_host, timeout_s: 20}\n";

static const char greet_yml[] = "- hosts: all\n"
                                "  gather_facts: false\n"
                                "  tasks:\n"
                                "    - name: say it\n"
                                "      ansible.builtin.command:\n"
                                "        argv: [/usr/bin/echo, '{{ greeting }} x{{ count }}']\n"
                                "    - name: report\n"
                                "      ansible.builtin.debug:\n"
                                "        msg: 'greeted with {{ greeting }}'\n";

static const char nohosts_yml[] = "- hosts: webservers\n"
                                  "  gather_facts: false\n"
                                  "  tasks:\n"
                                  "    - ansible.builtin.ping:\n";

static char *g_dir;
static char *g_tmp; /* TMPDIR for the connector's private directories */
static bt_config *g_cfg;
static bt_connectors *g_conn;
static json_t *g_local, *g_ssh, *g_none;

static const json_t *tool(const char *name)
{
    json_t *tools = json_object_get(bt_yaml_root(bt_config_tools(g_cfg)), "tools");
    for (size_t i = 0; i < json_array_size(tools); i++) {
        json_t *t = json_array_get(tools, i);
        if (strcmp(json_string_value(json_object_get(t, "name")), name) == 0)
            return t;
    }
    fprintf(stderr, "no test tool %s\n", name);
    abort();
}

/* Invoke a test tool against target; inputs is stolen (may be NULL). */
static enum bt_err run(const char *name, json_t *inputs, const json_t *target, json_t **res,
                       char *err)
{
    *res = NULL;
    enum bt_err e = bt_connectors_invoke(g_conn, tool(name), inputs, target, res, err, BT_ERRLEN);
    json_decref(inputs);
    return e;
}

static const char *field(const json_t *res, const char *key)
{
    return json_string_value(json_object_get(res, key));
}

/* Private directories the connector left in its temporary directory (the
 * test's own, through TMPDIR, so that concurrent runs do not count). */
static int leftover_dirs(void)
{
    DIR *d = opendir(g_tmp);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        if (strncmp(e->d_name, "baton-ansible-", 14) == 0)
            n++;
    if (d)
        closedir(d);
    return n;
}

/* Reap whatever was re-parented to us and has exited; 1 when a descendant
 * is still running after up to 2 s (a process ansible left behind). */
static int leftover_processes(void)
{
    for (int i = 0; i < 200; i++) {
        int st;
        pid_t p = waitpid(-1, &st, WNOHANG);
        if (p < 0 && errno == ECHILD)
            return 0;
        if (p == 0)
            usleep(10000);
    }
    return 1;
}

static void setup(void)
{
    g_dir = conn_config_dir("connectors: {}\n", tools_yaml, NULL);
    /* The playbooks directory lives inside the temporary config dir. */
    char *baton = bt_asprintf("connectors:\n"
                              "  ans:\n"
                              "    type: ansible\n"
                              "    playbooks_dir: %s/playbooks\n"
                              "    output_max: 65536\n"
                              "    forks: 2\n"
                              "    extra_env: [BT_TEST_PASSED, BT_TEST_UNSET]\n"
                              "  secrets:\n"
                              "    type: ansible\n"
                              "    password_env: BT_TEST_PW\n"
                              "    private_key_env: BT_TEST_KEY\n"
                              "  gone:\n"
                              "    type: ansible\n"
                              "    ansible: /usr/bin/baton-no-such-ansible\n",
                              g_dir);
    conn_write(g_dir, "baton.yaml", baton);
    free(baton);
    g_tmp = bt_asprintf("%s/tmp", g_dir);
    mkdir(g_tmp, 0700);
    setenv("TMPDIR", g_tmp, 1);
    char *pdir = bt_asprintf("%s/playbooks", g_dir);
    mkdir(pdir, 0700);
    conn_write(pdir, "greet.yml", greet_yml);
    conn_write(pdir, "nohosts.yml", nohosts_yml);
    free(pdir);
    bt_diag *d = bt_diag_new();
    g_cfg = bt_config_load(g_dir, d);
    g_conn = g_cfg ? bt_connectors_new(g_cfg, NULL, d) : NULL;
    conn_dump_diag(d);
    if (!g_conn || bt_diag_count(d)) {
        fprintf(stderr, "setup failed\n");
        exit(1);
    }
    bt_diag_free(d);
    g_local = json_pack("{s:s, s:s, s:s, s:s}", "name", "localhost", "hostname", "localhost", "ip",
                        "127.0.0.1", "connection", "local");
    /* 127.0.0.1 port 22: refused when no sshd runs; when one does, the
     * private HOME's empty known_hosts fails host key checking. Both are
     * "unreachable" to ansible, at once. */
    g_ssh = json_pack("{s:s, s:s, s:s, s:s}", "name", "nowhere", "hostname", "nowhere.invalid",
                      "ip", "127.0.0.1", "connection", "ssh");
    g_none = json_pack("{s:s, s:s, s:s, s:s}", "name", "printer", "hostname", "printer.example",
                       "ip", "10.0.0.9", "connection", "none");
}

static void teardown(void)
{
    json_decref(g_local);
    json_decref(g_ssh);
    json_decref(g_none);
    bt_connectors_free(g_conn);
    bt_config_free(g_cfg);
    conn_rmtree(g_dir);
    free(g_dir);
    free(g_tmp);
}

/* ---- without running ansible ------------------------------------------------ */

static void test_check_tool(void)
{
    const bt_yaml_doc *doc = bt_config_tools(g_cfg);
    json_t *tools = json_object_get(bt_yaml_root(doc), "tools");
    bt_diag *d = bt_diag_new();
    for (size_t i = 0; i < 13; i++)
        CHECK_MSG(bt_connectors_check_tool(g_conn, doc, json_array_get(tools, i), d), "tool %zu",
                  i);
    /* Jinja blocks are ansible's: no placeholder inside them is looked at. */
    CHECK(bt_connectors_check_tool(g_conn, doc, tool("jinja"), d));
    CHECK(bt_connectors_check_tool(g_conn, doc, tool("secret_ping"), d));
    conn_dump_diag(d);
    CHECK_INT(bt_diag_count(d), 0);
    bt_diag_free(d);

    d = bt_diag_new();
    for (size_t i = 13; i < 20; i++)
        CHECK_MSG(!bt_connectors_check_tool(g_conn, doc, json_array_get(tools, i), d), "tool %zu",
                  i);
    conn_dump_diag(d);
    CHECK(DIAG_HAS(d, "tools.yaml:", "tools[13].args: placeholder {nope} names no input",
                   "(tool bad1)"));
    CHECK(DIAG_HAS(d, "tools[14].module: must be a module name"));
    CHECK(DIAG_HAS(d, "tools[15].playbook: must be a file name inside playbooks_dir"));
    CHECK(DIAG_HAS(d, "tools[16].operation: unknown operation 'run'", "module, playbook"));
    CHECK(DIAG_HAS(d, "tools[17].extra_vars: 'ansible_connection' is refused"));
    CHECK(DIAG_HAS(d, "tools[18].command: is for connectors of type local"));
    CHECK(DIAG_HAS(d, "tools[18].target: required for ansible tools"));
    CHECK(DIAG_HAS(d, "tools[19].playbook: is only for operation playbook"));
    CHECK_INT(bt_diag_count(d), 8);
    bt_diag_free(d);
}

static void test_bad_config(void)
{
    char *dir = conn_config_dir("connectors:\n"
                                "  a:\n"
                                "    type: ansible\n"
                                "    ansible: bin/ansible\n"
                                "    forks: 99\n"
                                "    private_key_env: 'ssh key'\n"
                                "    extra_env: [PATH, GOOD_NAME]\n"
                                "    colour: true\n",
                                NULL, NULL);
    bt_diag *d = bt_diag_new();
    bt_config *cfg = bt_config_load(dir, d);
    bt_connectors *c = cfg ? bt_connectors_new(cfg, NULL, d) : NULL;
    CHECK(cfg != NULL);
    CHECK(c == NULL);
    conn_dump_diag(d);
    CHECK(DIAG_HAS(d, "baton.yaml:4: connectors.a.ansible: must be an absolute path"));
    CHECK(DIAG_HAS(d, "baton.yaml:5: connectors.a.forks: must be an integer between 1 and 50"));
    CHECK(DIAG_HAS(d, "baton.yaml:6: connectors.a.private_key_env: must be the name of an "
                      "environment variable"));
    CHECK(DIAG_HAS(d, "baton.yaml:7: connectors.a.extra_env: element 0"));
    CHECK(DIAG_HAS(d, "baton.yaml:8: connectors.a.colour: unknown key"));
    CHECK_INT(bt_diag_count(d), 5);
    bt_connectors_free(c);
    bt_config_free(cfg);
    bt_diag_free(d);
    conn_rmtree(dir);
    free(dir);
}

static void test_refused_before_running(void)
{
    json_t *res;
    char err[BT_ERRLEN];
    json_t *in = json_pack("{s:s}", "host", "printer");
    CHECK_INT(run("ping", in, g_none, &res, err), BT_EDENIED);
    CHECK(res == NULL);
    CHECK_MSG(strstr(err, "printer cannot be reached by ansible (connection: none)"), "%s", err);

    /* The pipeline checked the pattern; the connector checks again. */
    CHECK_INT(run("echo", json_pack("{s:s, s:s}", "host", "localhost", "word", "a;b"), g_local,
                  &res, err),
              BT_EDENIED);
    CHECK_MSG(strstr(err, "input 'word' contains ';'; refused"), "%s", err);
    CHECK_INT(run("echo", json_pack("{s:s, s:s}", "host", "localhost", "word", "{{x}}"), g_local,
                  &res, err),
              BT_EDENIED);
    CHECK_INT(run("echo", json_pack("{s:s}", "host", "localhost"), g_local, &res, err), BT_EINVAL);
    CHECK_MSG(strstr(err, "input 'word' is missing"), "%s", err);

    CHECK_INT(run("ping", json_pack("{s:s}", "host", "localhost"), NULL, &res, err), BT_EINVAL);
    CHECK_MSG(strstr(err, "no target asset was given"), "%s", err);

    json_t *odd = json_pack("{s:s, s:s, s:s, s:s}", "name", "odd", "hostname", "-oProxy", "ip",
                            "10.0.0.1", "connection", "ssh");
    CHECK_INT(run("ping", json_pack("{s:s}", "host", "odd"), odd, &res, err), BT_EDENIED);
    json_decref(odd);

    CHECK_INT(run("missing", json_pack("{s:s}", "host", "localhost"), g_local, &res, err),
              BT_ECONNECTOR);
    CHECK(res == NULL);
    CHECK_MSG(strstr(err, "ansible is not installed at /usr/bin/baton-no-such-ansible"), "%s", err);

    CHECK_INT(run("absent_pb", json_pack("{s:s}", "host", "localhost"), g_local, &res, err),
              BT_ECONNECTOR);
    CHECK_MSG(strstr(err, "playbook absent.yml is not in"), "%s", err);
}

/* ---- real runs ------------------------------------------------------------ */

static void test_ping(void)
{
    json_t *res;
    char err[BT_ERRLEN];
    enum bt_err e = run("ping", json_pack("{s:s}", "host", "localhost"), g_local, &res, err);
    CHECK_MSG(e == BT_OK, "%s", err);
    CHECK_STR(field(res, "stdout"), "{\"ping\":\"pong\"}");
    CHECK_STR(field(res, "module"), "ansible.builtin.ping");
    CHECK(json_is_false(json_object_get(res, "changed")));
    CHECK(json_is_false(json_object_get(res, "failed")));
    CHECK(json_is_false(json_object_get(res, "unreachable")));
    CHECK_INT(json_integer_value(json_object_get(res, "exit_code")), 0);
    json_t *argv = json_object_get(res, "command");
    CHECK_STR(json_string_value(json_array_get(argv, 0)), ANSIBLE);
    CHECK_STR(json_string_value(json_array_get(argv, 1)), "localhost");
    char *dump = json_dumps(argv, JSON_COMPACT);
    CHECK_MSG(strstr(dump, "\"-i\",\"localhost,\",\"-c\",\"local\",\"--limit\",\"localhost\""),
              "%s", dump);
    free(dump);
    json_decref(res);
}

static void test_command_echo(void)
{
    json_t *res;
    char err[BT_ERRLEN];
    enum bt_err e = run("echo", json_pack("{s:s, s:s}", "host", "localhost", "word", "hello"),
                        g_local, &res, err);
    CHECK_MSG(e == BT_OK, "%s", err);
    CHECK_STR(field(res, "stdout"), "said-hello");
    CHECK_STR(field(res, "stderr"), "");
    CHECK(json_is_true(json_object_get(res, "changed")));
    CHECK_INT(json_integer_value(json_object_get(res, "rc")), 0);
    char *dump = json_dumps(json_object_get(res, "command"), JSON_COMPACT);
    CHECK_MSG(strstr(dump, "\"-a\",\"{\\\"argv\\\":[\\\"/usr/bin/echo\\\",\\\"said-hello\\\"]}\""),
              "%s", dump);
    free(dump);
    json_decref(res);
}

static void test_command_fails(void)
{
    json_t *res;
    char err[BT_ERRLEN];
    enum bt_err e = run("fail3", json_pack("{s:s}", "host", "localhost"), g_local, &res, err);
    CHECK_INT(e, BT_ECONNECTOR);
    CHECK_MSG(strstr(err, "ansible.builtin.command failed on localhost: non-zero return code (rc "
                          "3): to-stderr"),
              "%s", err);
    CHECK(res != NULL);
    CHECK_INT(json_integer_value(json_object_get(res, "rc")), 3);
    CHECK(json_is_true(json_object_get(res, "failed")));
    CHECK_STR(field(res, "stderr"), "to-stderr");
    json_decref(res);
}

static void test_unknown_module(void)
{
    json_t *res;
    char err[BT_ERRLEN];
    enum bt_err e = run("nosuch", json_pack("{s:s}", "host", "localhost"), g_local, &res, err);
    CHECK_INT(e, BT_ECONNECTOR);
    CHECK_MSG(strstr(err, "The module ansible.builtin.no_such_thing was not found"), "%s", err);
    json_decref(res);
}

static void test_environment(void)
{
    setenv("BT_TEST_PASSED", "through", 1);
    setenv("BATON_SECRET", "must-not-leak", 1);
    json_t *res;
    char err[BT_ERRLEN];
    enum bt_err e = run("env", json_pack("{s:s}", "host", "localhost"), g_local, &res, err);
    CHECK_MSG(e == BT_OK, "%s", err);
    const char *out = field(res, "stdout");
    CHECK_MSG(out && strstr(out, "BT_TEST_PASSED=through\n"), "%s", out ? out : "");
    CHECK(out && !strstr(out, "must-not-leak"));
    CHECK(out && !strstr(out, "BT_TEST_UNSET"));
    CHECK(out && strstr(out, "PATH=/usr/bin:/bin\n"));
    char *home = bt_asprintf("HOME=%s/baton-ansible-", g_tmp);
    CHECK_MSG(out && strstr(out, home), "want %s", home);
    free(home);
    json_decref(res);
    unsetenv("BATON_SECRET");
}

static void test_timeout(void)
{
    json_t *res;
    char err[BT_ERRLEN];
    int64_t t0 = bt_mono_ms();
    enum bt_err e = run("sleep", json_pack("{s:s, s:s}", "host", "localhost", "secs", "47"),
                        g_local, &res, err);
    int64_t took = bt_mono_ms() - t0;
    CHECK_INT(e, BT_ETIMEOUT);
    CHECK_MSG(strstr(err, "ansible.builtin.command on localhost did not finish within 3 s"), "%s",
              err);
    CHECK_MSG(took < 3000 + 2000, "took %lld ms", (long long)took);
    CHECK(res && json_is_true(json_object_get(res, "timed_out")));
    CHECK_MSG(!leftover_processes(), "a process of the timed-out run is still there");
    json_decref(res);
}

static void test_playbook(void)
{
    json_t *res;
    char err[BT_ERRLEN];
    enum bt_err e = run("greet", json_pack("{s:s, s:s}", "host", "localhost", "word", "bonjour"),
                        g_local, &res, err);
    CHECK_MSG(e == BT_OK, "%s", err);
    const char *out = field(res, "stdout");
    CHECK_MSG(out && strstr(out, "greeted with bonjour"), "%s", out ? out : "");
    CHECK(out && strstr(out, "PLAY RECAP"));
    CHECK(json_is_true(json_object_get(res, "changed"))); /* the first task's, via the recap */
    CHECK_STR(field(res, "playbook"), "greet.yml");
    char *dump = json_dumps(json_object_get(res, "command"), JSON_COMPACT);
    CHECK_MSG(strstr(dump, "\"-e\",\"{\\\"count\\\":2,\\\"greeting\\\":\\\"bonjour\\\"}\""), "%s",
              dump);
    CHECK_MSG(strstr(dump, "/playbooks/greet.yml\"]"), "%s", dump);
    free(dump);
    json_decref(res);

    e = run("nohosts", json_pack("{s:s}", "host", "localhost"), g_local, &res, err);
    CHECK_INT(e, BT_ECONNECTOR);
    CHECK_MSG(strstr(err, "nohosts.yml ran nothing on localhost"), "%s", err);
    json_decref(res);
}

static void test_output_cap(void)
{
    json_t *res;
    char err[BT_ERRLEN];
    /* 13893 bytes of output, 4096 kept */
    enum bt_err e = run("long", json_pack("{s:s}", "host", "localhost"), g_local, &res, err);
    CHECK_MSG(e == BT_OK, "%s", err);
    const char *out = field(res, "stdout");
    CHECK_INT(out ? strlen(out) : 0, 4096);
    CHECK(out && strncmp(out, "1\n2\n3\n", 6) == 0);
    CHECK(json_is_true(json_object_get(res, "truncated")));
    json_decref(res);

    /* a result file past 4 x output_max + 64 KiB is not read at all */
    e = run("huge", json_pack("{s:s}", "host", "localhost"), g_local, &res, err);
    CHECK_INT(e, BT_ECONNECTOR);
    CHECK_MSG(strstr(err, "the result of ansible.builtin.command on localhost is larger than "
                          "69632 bytes"),
              "%s", err);
    CHECK(res && json_string_length(json_object_get(res, "stdout")) <= 1024);
    json_decref(res);
}

static void test_unreachable(void)
{
    json_t *res;
    char err[BT_ERRLEN];
    int64_t t0 = bt_mono_ms();
    enum bt_err e = run("ssh_ping", json_pack("{s:s}", "host", "nowhere"), g_ssh, &res, err);
    int64_t took = bt_mono_ms() - t0;
    CHECK_INT(e, BT_EUNAVAIL);
    CHECK_MSG(strstr(err, "nowhere.invalid (ssh) is unreachable"), "%s", err);
    CHECK_MSG(took < 15000, "took %lld ms", (long long)took);
    CHECK(res && json_is_true(json_object_get(res, "unreachable")));
    char *dump = json_dumps(json_object_get(res, "command"), JSON_COMPACT);
    CHECK_MSG(strstr(dump, "\"-c\",\"ssh\"") && strstr(dump, "\"-e\",\"ansible_host=127.0.0.1\""),
              "%s", dump);
    free(dump);
    json_decref(res);
}

/* RUN, and say how long the case took (ansible's start-up dominates). */
#define TIMED(fn)                                                                                  \
    do {                                                                                           \
        int64_t t0_ = bt_mono_ms();                                                                \
        RUN(fn);                                                                                   \
        fprintf(stderr, "%s: %lld ms\n", #fn, (long long)(bt_mono_ms() - t0_));                    \
    } while (0)

/* The password and the key path reach ansible, but never argv, the result
 * or the message. Debian's ansible needs sshpass for an ssh password: without
 * it the step fails saying so, which proves the password file was read. */
static void test_secrets(void)
{
    json_t *res;
    char err[BT_ERRLEN];
    unsetenv("BT_TEST_PW");
    CHECK_INT(run("secret_ping", json_pack("{s:s}", "host", "nowhere"), g_ssh, &res, err),
              BT_ECONNECTOR);
    CHECK_MSG(strstr(err, "environment variable BT_TEST_PW (password_env) is not set"), "%s", err);
    CHECK(res == NULL);

    setenv("BT_TEST_PW", "s3cret-pw", 1);
    setenv("BT_TEST_KEY", "/nonexistent/baton-test-key", 1);
    enum bt_err e = run("secret_ping", json_pack("{s:s}", "host", "nowhere"), g_ssh, &res, err);
    CHECK_MSG(e == BT_ECONNECTOR || e == BT_EUNAVAIL, "%d %s", e, err);
    char *dump = res ? json_dumps(res, JSON_COMPACT) : NULL;
    CHECK_MSG(dump && strstr(dump, "/connection.json\""), "%s", dump ? dump : "");
    CHECK(dump && !strstr(dump, "s3cret-pw") && !strstr(dump, "baton-test-key"));
    CHECK(!strstr(err, "s3cret-pw") && !strstr(err, "baton-test-key"));
    if (e == BT_ECONNECTOR)
        CHECK_MSG(strstr(err, "sshpass"), "%s", err);
    free(dump);
    json_decref(res);
    unsetenv("BT_TEST_PW");
    unsetenv("BT_TEST_KEY");
}

int main(void)
{
    if (access(ANSIBLE, X_OK) != 0) {
        /* ansible-core is one of the Makefile's packages; without it this
         * test has nothing to run against. */
        fprintf(stderr, "%s is not installed (apt-get install ansible-core)\n", ANSIBLE);
        return 1;
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    setup();
    TIMED(test_check_tool);
    TIMED(test_bad_config);
    TIMED(test_refused_before_running);
    TIMED(test_ping);
    TIMED(test_command_echo);
    TIMED(test_command_fails);
    TIMED(test_unknown_module);
    TIMED(test_environment);
    TIMED(test_timeout);
    TIMED(test_playbook);
    TIMED(test_output_cap);
    TIMED(test_unreachable);
    TIMED(test_secrets);
    bt_test_current = "cleanup";
    CHECK_MSG(!leftover_processes(), "a process ansible started is still running");
    CHECK_INT(leftover_dirs(), 0);
    teardown();
    return bt_test_finish();
}
