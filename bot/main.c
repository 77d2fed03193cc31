/*
 * main.c - the `baton` command.
 *
 *   baton [--config DIR] [--store LOCATION] [--log-level LEVEL] COMMAND ...
 *
 *   ask [--as USER] [--json] TEXT...    handle one request (A-E) and print the answer
 *   explain [--as USER] [--json] TEXT... stages A-D only: nothing runs, nothing is stored
 *   check                               validate the configuration and the store
 *   approvals [--json]                  approvals waiting for a decision
 *   approve ID [--step N] [--token T] [--as USER]   approve (or release step N)
 *   deny ID [--as USER]                 deny: nothing of the plan runs
 *   cancel ID [--as USER]               the requester withdraws the request
 *   worker [--once]                     run background executions and approval timers
 *   audit [--since WHEN] [--json] [--verify]  export or verify the audit log
 *   status EXECUTION [--json]           an execution and its steps
 *   serve [--listen ADDR:PORT]          the daemon: console WebSocket, /healthz, /metrics
 *   token USER                          issue a console sign-in token (printed once)
 *   migrate [--store LOCATION]          create or upgrade the store, print its schema version
 *   version
 *
 * Exit codes are documented in docs/cli.md and never renumbered.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bot/conf.h"
#include "bot/log.h"
#include "bot/server.h"
#include "bot/store/store.h"
#include "bot/util.h"
#include "pipeline/pipeline.h"

enum exit_code {
    EXIT_ANSWERED = 0,
    EXIT_FAILURE_ = 1,  /* runtime error (store, I/O) */
    EXIT_USAGE = 2,     /* bad command line */
    EXIT_CONFIG = 3,    /* configuration invalid */
    EXIT_APPROVAL = 4,  /* plan recorded, waiting for approval */
    EXIT_CLARIFY = 5,   /* baton needs more information */
    EXIT_UNKNOWN = 6,   /* baton cannot handle the request */
    EXIT_REFUSED = 7,   /* refused: policy, or a value that failed validation */
    EXIT_EXEC_FAIL = 8, /* the plan ran and a step failed */
    EXIT_TAMPERED = 9,  /* the audit log's hash chain is broken */
};

#define MAX_TEXT 4096

struct options {
    const char *config_dir;
    const char *store;
    const char *as_user;
    bool json;
    bool as_given;
};

static void usage(FILE *out)
{
    fputs("usage: baton [--config DIR] [--store LOCATION] [--log-level LEVEL] COMMAND\n"
          "\n"
          "commands:\n"
          "  ask [--as USER] [--json] TEXT...      handle a request and print the answer\n"
          "  explain [--as USER] [--json] TEXT...  show stages A-D; nothing runs\n"
          "  check                                 validate configuration and store\n"
          "  approvals [--json]                    approvals waiting for a decision\n"
          "  approve ID [--step N] [--as USER]     approve a plan, or release step N (level 3)\n"
          "  deny ID [--as USER]                   deny: nothing of the plan runs\n"
          "  cancel ID [--as USER]                 withdraw your own pending request\n"
          "  worker [--once]                       run queued executions, expire and remind\n"
          "  audit [--since WHEN] [--json]         export the audit log (WHEN: 2026-11-23,\n"
          "                                        2026-11-23T17:00:00Z, or 30m, 12h, 7d ago)\n"
          "  audit --verify                        check the audit log's hash chain\n"
          "  status EXECUTION [--json]             show an execution and its steps\n"
          "  serve [--listen ADDR:PORT]            run the daemon (console, /healthz, /metrics)\n"
          "  token USER                            issue a console sign-in token\n"
          "  migrate [--store LOCATION]            create or upgrade the store's schema\n"
          "  version                               print the version\n"
          "\n"
          "--config defaults to $BATON_CONFIG, else ./config, else /etc/baton.\n"
          "Exit codes: 0 answered, 1 error, 2 usage, 3 bad configuration, 4 waiting for\n"
          "approval, 5 needs clarification, 6 unknown request, 7 refused, 8 execution failed,\n"
          "9 audit log tampered with.\n",
          out);
}

static void print_diag(const bt_diag *d)
{
    for (size_t i = 0; i < bt_diag_count(d); i++)
        fprintf(stderr, "  %s\n", bt_diag_get(d, i));
}

/* Join argv[from..argc) with spaces into one request text (capped). */
static char *join_text(int argc, char **argv, int from)
{
    bt_buf b = BT_BUF_INIT(MAX_TEXT + 1);
    for (int i = from; i < argc; i++) {
        if ((i > from && bt_buf_puts(&b, " ") != BT_OK) || bt_buf_puts(&b, argv[i]) != BT_OK) {
            bt_buf_free(&b);
            return NULL;
        }
    }
    return bt_buf_steal(&b);
}

static int exit_for(const json_t *r)
{
    const char *kind = json_string_value(json_object_get(r, "kind"));
    const char *err = json_string_value(json_object_get(r, "error"));
    if (!kind)
        return EXIT_FAILURE_;
    if (strcmp(kind, "answer") == 0)
        return EXIT_ANSWERED;
    if (strcmp(kind, "approval") == 0)
        return EXIT_APPROVAL;
    if (strcmp(kind, "clarify") == 0)
        return EXIT_CLARIFY;
    if (strcmp(kind, "unknown") == 0)
        return EXIT_UNKNOWN;
    if (err && strcmp(err, "execution_failed") == 0)
        return EXIT_EXEC_FAIL;
    if (err && (strcmp(err, "denied") == 0 || strcmp(err, "invalid_value") == 0 ||
                strcmp(err, "refused") == 0 || strcmp(err, "asset_busy") == 0 ||
                strcmp(err, "invalid_input") == 0))
        return EXIT_REFUSED;
    return EXIT_FAILURE_;
}

/* Load configuration, or print its problems and return NULL. */
static bt_config *load_config(const struct options *o, bt_diag *d, char **dir_out)
{
    char *dir = bt_config_find_dir(o->config_dir);
    bt_config *cfg = bt_config_load(dir, d);
    *dir_out = dir;
    return cfg;
}

static void apply_log_level(const bt_config *cfg)
{
    const char *lvl = json_string_value(bt_config_get(cfg, "log.level"));
    int n = lvl ? bt_log_level_parse(lvl) : -1;
    if (n >= 0)
        bt_log_set_level((enum bt_log_level)n);
}

static int cmd_check(const struct options *o)
{
    bt_diag *d = bt_diag_new();
    char *dir = NULL;
    bt_config *cfg = load_config(o, d, &dir);
    /* The configuration is checked against a store in memory, so a check
     * never creates or changes the real one; the real store is then opened
     * on its own when it exists, to find a corrupt or newer file. */
    bt_pipeline *p = cfg ? bt_pipeline_new(cfg, ":memory:", d) : NULL;
    if (cfg)
        bt_server_check_config(cfg, d);
    const char *loc = o->store ? o->store : json_string_value(bt_config_get(cfg, "store.location"));
    if (!loc)
        loc = "var/baton.db";
    const char *path = strncmp(loc, "sqlite:", 7) == 0 ? loc + 7 : loc;
    struct stat st;
    if (cfg && strstr(loc, "://") == NULL && stat(path, &st) == 0) {
        bt_store *s = NULL;
        char err[BT_ERRLEN];
        if (bt_store_open(loc, &s, err, sizeof err) != BT_OK)
            bt_diag_add(d, NULL, 0, NULL, "store: %s", err);
        bt_store_close(s);
    }
    int rc;
    if (bt_diag_count(d)) {
        fprintf(stderr, "baton check: %zu problem%s in %s:\n", bt_diag_count(d),
                bt_diag_count(d) == 1 ? "" : "s", dir);
        print_diag(d);
        rc = EXIT_CONFIG;
    } else {
        printf("baton check: configuration in %s is valid\n", dir);
        rc = EXIT_ANSWERED;
    }
    json_t *notes = p ? bt_pipeline_coverage(p) : NULL;
    size_t ni;
    json_t *note;
    json_array_foreach(notes, ni, note)
    {
        printf("note: %s\n", json_string_value(json_object_get(note, "text")));
    }
    json_decref(notes);
    bt_pipeline_free(p);
    bt_config_free(cfg);
    bt_diag_free(d);
    free(dir);
    return rc;
}

/* Open configuration and pipeline for a command; prints problems. */
static bt_pipeline *open_pipeline(const struct options *o, bt_config **cfg_out)
{
    bt_diag *d = bt_diag_new();
    char *dir = NULL;
    bt_config *cfg = load_config(o, d, &dir);
    if (cfg)
        apply_log_level(cfg);
    bt_pipeline *p = cfg && !bt_diag_count(d) ? bt_pipeline_new(cfg, o->store, d) : NULL;
    if (!p) {
        fprintf(stderr, "baton: cannot start: %zu configuration problem%s in %s:\n",
                bt_diag_count(d), bt_diag_count(d) == 1 ? "" : "s", dir);
        print_diag(d);
        fputs("Run `baton check` after fixing them.\n", stderr);
        bt_config_free(cfg);
        cfg = NULL;
    }
    bt_diag_free(d);
    free(dir);
    *cfg_out = cfg;
    return p;
}

static const char *acting_user(const struct options *o, const bt_config *cfg)
{
    if (o->as_given)
        return o->as_user;
    return json_string_value(bt_config_get(cfg, "cli.default_user"));
}

/* Tell the user what happened while they were away (interrupted runs). */
static void print_notices(bt_pipeline *p, const char *user)
{
    json_t *list = bt_pipeline_notices(p, user);
    size_t i;
    json_t *n;
    json_array_foreach(list, i, n)
        fprintf(stderr, "Notice: %s\n", json_string_value(json_object_get(n, "text")));
    json_decref(list);
}

static void print_response(const json_t *r, bool json)
{
    if (json) {
        char *s = json_dumps(r, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
        if (s)
            puts(s);
        free(s);
    } else {
        const char *t = json_string_value(json_object_get(r, "text"));
        puts(t ? t : "");
    }
}

static int cmd_request(const struct options *o, bool execute, const char *text)
{
    bt_config *cfg = NULL;
    bt_pipeline *p = open_pipeline(o, &cfg);
    if (!p)
        return EXIT_CONFIG;
    const char *user = acting_user(o, cfg);
    print_notices(p, user);
    json_t *r =
        execute ? bt_pipeline_handle(p, text, user, "cli") : bt_pipeline_explain(p, text, user);
    print_response(r, o->json);
    int rc = exit_for(r);
    json_decref(r);
    bt_pipeline_free(p);
    bt_config_free(cfg);
    return rc;
}

/* approve / deny / cancel */
static int cmd_decide(struct options *o, const char *cmd, int argc, char **argv, int i)
{
    const char *id = NULL, *token = NULL;
    long step = 0; /* 1-based on the command line; 0 = the whole plan */
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            o->json = true;
        } else if (strcmp(argv[i], "--as") == 0 && i + 1 < argc) {
            o->as_user = argv[++i];
            o->as_given = true;
        } else if (strcmp(argv[i], "--step") == 0 && i + 1 < argc && strcmp(cmd, "approve") == 0) {
            if (!bt_parse_long(argv[++i], 1, 10000, &step)) {
                fprintf(stderr, "baton approve: --step takes a step number (1, 2, ...)\n");
                return EXIT_USAGE;
            }
        } else if (strcmp(argv[i], "--token") == 0 && i + 1 < argc) {
            token = argv[++i];
        } else if (argv[i][0] != '-' && !id) {
            id = argv[i];
        } else {
            fprintf(stderr, "baton %s: unexpected argument '%s'\n", cmd, argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!id && !token) {
        fprintf(stderr, "baton %s: which approval? (`baton approvals` lists them)\n", cmd);
        return EXIT_USAGE;
    }
    bt_config *cfg = NULL;
    bt_pipeline *p = open_pipeline(o, &cfg);
    if (!p)
        return EXIT_CONFIG;
    const char *user = acting_user(o, cfg);
    print_notices(p, user);
    json_t *r;
    if (!user)
        r = json_pack("{s:s, s:s, s:s}", "kind", "error", "error", "refused", "text",
                      "who are you? say --as USER");
    else if (strcmp(cmd, "cancel") == 0)
        r = bt_pipeline_cancel(p, id, user, "cli");
    else
        r = bt_pipeline_decide(p, id, user, strcmp(cmd, "deny") == 0 ? "deny" : "approve",
                               (int)step - 1, "cli", token);
    print_response(r, o->json);
    int rc = exit_for(r);
    json_decref(r);
    bt_pipeline_free(p);
    bt_config_free(cfg);
    return rc;
}

static void print_pending(const json_t *list)
{
    if (json_array_size(list) == 0) {
        puts("No approvals are waiting.");
        return;
    }
    size_t i;
    json_t *a;
    int64_t now = bt_wall_ms();
    json_array_foreach(list, i, a)
    {
        long long left = (json_integer_value(json_object_get(a, "expires_ms")) - now) / 1000;
        if (left < 0)
            left = 0;
        printf("%s  level %lld  %-9s  requested by %s  expires in %lldm%02llds  plan %.12s\n",
               json_string_value(json_object_get(a, "approval_id")),
               (long long)json_integer_value(json_object_get(a, "level")),
               json_string_value(json_object_get(a, "state")),
               json_string_value(json_object_get(a, "requester")), left / 60, left % 60,
               json_string_value(json_object_get(a, "plan_hash")));
        json_t *next = json_object_get(a, "next_step");
        if (json_is_integer(next))
            printf("    step %lld waits for release\n", (long long)json_integer_value(next) + 1);
        printf("    may decide:");
        size_t k;
        json_t *u;
        json_array_foreach(json_object_get(a, "may_decide"), k, u)
            printf("%s %s", k ? "," : "", json_string_value(u));
        printf("%s\n", json_array_size(json_object_get(a, "may_decide")) ? "" : " nobody");
    }
}

static int cmd_approvals(struct options *o, int argc, char **argv, int i)
{
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            o->json = true;
        } else {
            fprintf(stderr, "baton approvals: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    bt_config *cfg = NULL;
    bt_pipeline *p = open_pipeline(o, &cfg);
    if (!p)
        return EXIT_CONFIG;
    /* Expire what is due first, so the list shows what can still be
     * decided. */
    json_t *events = bt_pipeline_sweep(p, bt_wall_ms());
    json_decref(events);
    json_t *list = bt_pipeline_pending(p);
    if (o->json) {
        char *s = json_dumps(list, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (s)
            puts(s);
        free(s);
    } else {
        print_pending(list);
    }
    json_decref(list);
    bt_pipeline_free(p);
    bt_config_free(cfg);
    return EXIT_ANSWERED;
}

/* The store named by --store, else by the configuration. Prints why not. */
static bt_store *open_store(const struct options *o)
{
    bt_diag *d = bt_diag_new();
    char *dir = NULL;
    bt_config *cfg = o->store ? NULL : load_config(o, d, &dir);
    const char *loc = o->store ? o->store : json_string_value(bt_config_get(cfg, "store.location"));
    if (!loc)
        loc = "var/baton.db";
    bt_store *st = NULL;
    char err[BT_ERRLEN];
    if (bt_store_open(loc, &st, err, sizeof err) != BT_OK) {
        fprintf(stderr, "baton: %s\n", err);
        st = NULL;
    }
    bt_config_free(cfg);
    bt_diag_free(d);
    free(dir);
    return st;
}

/* migrate: open the store, which applies any migrations it lacks (under the
 * backend's lock, so several processes may run it at once), and print the
 * schema version it is at. --store may follow the command too. */
static int cmd_migrate(struct options *o, int argc, char **argv, int i)
{
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--store") == 0 && i + 1 < argc) {
            o->store = argv[++i];
        } else {
            fprintf(stderr, "baton migrate: unknown argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    bt_store *st = open_store(o);
    if (!st)
        return EXIT_CONFIG;
    printf("store schema version %d\n", bt_store_schema_version(st));
    bt_store_close(st);
    return EXIT_ANSWERED;
}

/* --since: an ISO date or time (UTC), or a duration ago ("30m", "12h", "7d").
 * Returns false on anything else. */
static bool parse_since(const char *s, int64_t *out_ms)
{
    size_t len = strlen(s);
    if (len >= 2 && len < 12 && (s[len - 1] == 'm' || s[len - 1] == 'h' || s[len - 1] == 'd')) {
        char num[12];
        memcpy(num, s, len - 1);
        num[len - 1] = '\0';
        long n;
        if (!bt_parse_long(num, 0, 100000, &n))
            return false;
        int64_t unit = s[len - 1] == 'm' ? 60000 : s[len - 1] == 'h' ? 3600000 : 86400000;
        *out_ms = bt_wall_ms() - (int64_t)n * unit;
        return true;
    }
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!end) {
        memset(&tm, 0, sizeof tm);
        end = strptime(s, "%Y-%m-%d", &tm);
    }
    if (!end || (*end && strcmp(end, "Z") != 0))
        return false;
    *out_ms = (int64_t)timegm(&tm) * 1000;
    return true;
}

static int cmd_audit(const struct options *o, int argc, char **argv, int i)
{
    bool verify = false, json = false;
    int64_t since = 0;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--verify") == 0) {
            verify = true;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strcmp(argv[i], "--since") == 0 && i + 1 < argc) {
            if (!parse_since(argv[++i], &since)) {
                fprintf(stderr,
                        "baton audit: --since takes 2026-11-23, 2026-11-23T17:00:00Z, "
                        "30m, 12h or 7d, not '%s'\n",
                        argv[i]);
                return EXIT_USAGE;
            }
        } else {
            fprintf(stderr, "baton audit: unknown argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    bt_store *st = open_store(o);
    if (!st)
        return EXIT_CONFIG;
    char err[BT_ERRLEN];
    int rc = EXIT_ANSWERED;
    if (verify) {
        long long n = 0;
        enum bt_err e = bt_store_audit_verify(st, &n, err, sizeof err);
        if (e == BT_OK) {
            printf("audit log: %lld entries, hash chain intact\n", n);
        } else {
            fprintf(stderr, "audit log: %s\n", err);
            rc = e == BT_ECORRUPT ? EXIT_TAMPERED : EXIT_FAILURE_;
        }
        bt_store_close(st);
        return rc;
    }
    /* Page through in bounded batches so a long log never sits in memory
     * whole; each batch starts after the last entry printed. */
    long long printed = 0;
    for (int batch = 0; batch < 100000; batch++) {
        json_t *list = NULL;
        if (bt_store_audit_list(st, since, 1000, &list, err, sizeof err) != BT_OK) {
            fprintf(stderr, "baton audit: %s\n", err);
            rc = EXIT_FAILURE_;
            break;
        }
        size_t k;
        json_t *e;
        long long last_seq = -1;
        int64_t last_ts = since;
        json_array_foreach(list, k, e)
        {
            long long seq = json_integer_value(json_object_get(e, "seq"));
            if (seq <= printed) /* entries of the same ms seen in the last batch */
                continue;
            if (json) {
                char *line = json_dumps(e, JSON_COMPACT | JSON_PRESERVE_ORDER);
                if (line)
                    puts(line);
                free(line);
            } else {
                char ts[40];
                bt_iso8601(json_integer_value(json_object_get(e, "ts_ms")), ts, sizeof ts);
                char *detail =
                    json_dumps(json_object_get(e, "detail"), JSON_COMPACT | JSON_ENCODE_ANY);
                printf("%6lld  %s  %-10s  %-20s  %s\n", seq, ts,
                       json_string_value(json_object_get(e, "actor")),
                       json_string_value(json_object_get(e, "event")), detail ? detail : "");
                free(detail);
            }
            printed = seq;
            last_seq = seq;
            last_ts = json_integer_value(json_object_get(e, "ts_ms"));
        }
        size_t got = json_array_size(list);
        json_decref(list);
        if (got < 1000 || last_seq < 0)
            break;
        since = last_ts;
    }
    bt_store_close(st);
    return rc;
}

static int cmd_status(const struct options *o, int argc, char **argv, int i)
{
    bool json = false;
    const char *id = NULL;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else if (!id)
            id = argv[i];
        else {
            fprintf(stderr, "baton status: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    if (!id) {
        fprintf(stderr, "baton status: which execution? (its id is in the answer to ask)\n");
        return EXIT_USAGE;
    }
    bt_store *st = open_store(o);
    if (!st)
        return EXIT_CONFIG;
    char err[BT_ERRLEN];
    json_t *ex = NULL;
    bt_pipeline_recover(st);
    enum bt_err e = bt_store_execution_get(st, id, &ex, err, sizeof err);
    bt_store_close(st);
    if (e != BT_OK) {
        fprintf(stderr, "baton status: %s\n", e == BT_ENOENT ? "no such execution" : err);
        return e == BT_ENOENT ? EXIT_REFUSED : EXIT_FAILURE_;
    }
    if (json) {
        char *s = json_dumps(ex, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (s)
            puts(s);
        free(s);
    } else {
        printf("execution %s: %s\n", id, json_string_value(json_object_get(ex, "state")));
        size_t k;
        json_t *step;
        json_array_foreach(json_object_get(ex, "steps"), k, step)
        {
            printf("  %lld. %-20s %s\n",
                   (long long)json_integer_value(json_object_get(step, "index")) + 1,
                   json_string_value(json_object_get(step, "tool")),
                   json_string_value(json_object_get(step, "state")));
        }
    }
    json_decref(ex);
    return EXIT_ANSWERED;
}

/* Set by SIGTERM/SIGINT so `baton worker` (and `baton serve`) finishes the
 * job in hand and stops: a signal handler can only set a flag, hence the one static. */
static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

/* Set by SIGHUP: `baton serve` reloads its configuration. */
static volatile sig_atomic_t reload_requested;

static void on_reload_signal(int sig)
{
    (void)sig;
    reload_requested = 1;
}

static int cmd_worker(struct options *o, int argc, char **argv, int i)
{
    bool once = false;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--once") == 0) {
            once = true;
        } else {
            fprintf(stderr, "baton worker: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    bt_config *cfg = NULL;
    bt_pipeline *p = open_pipeline(o, &cfg);
    if (!p)
        return EXIT_CONFIG;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    bt_log(BT_LOG_INFO, "worker", NULL, "worker started (pid %d)", (int)getpid());
    int64_t maintained_ms = bt_mono_ms();
    while (!stop_requested) {
        /* Store housekeeping (WAL checkpoint) now and then, as serve does. */
        if (bt_mono_ms() - maintained_ms >= 5000) {
            char err[BT_ERRLEN];
            if (bt_store_maintain(bt_pipeline_store(p), err, sizeof err) != BT_OK)
                bt_log(BT_LOG_WARN, "worker", NULL, "store housekeeping: %s", err);
            maintained_ms = bt_mono_ms();
        }
        json_t *events = bt_pipeline_sweep(p, bt_wall_ms());
        size_t k;
        json_t *ev;
        json_array_foreach(events, k, ev)
        {
            bt_log(BT_LOG_INFO, "worker", NULL, "approval %s: %s",
                   json_string_value(json_object_get(ev, "approval_id")),
                   json_string_value(json_object_get(ev, "type")));
        }
        json_decref(events);
        int did = bt_pipeline_worker_once(p);
        if (once)
            break;
        if (!did) {
            struct timespec ts = {1, 0};
            nanosleep(&ts, NULL); /* a signal cuts it short */
        }
    }
    bt_log(BT_LOG_INFO, "worker", NULL, "worker stopped");
    bt_pipeline_free(p);
    bt_config_free(cfg);
    return EXIT_ANSWERED;
}

static void catch_stop_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* baton serve [--listen ADDR:PORT]: run the daemon until SIGTERM/SIGINT. */
static int cmd_serve(struct options *o, int argc, char **argv, int i)
{
    const char *listen = NULL;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            listen = argv[++i];
        } else {
            fprintf(stderr, "baton serve: unexpected argument '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    bt_diag *d = bt_diag_new();
    char *dir = NULL;
    bt_config *cfg = load_config(o, d, &dir);
    if (cfg) {
        apply_log_level(cfg);
        bt_server_check_config(cfg, d);
    }
    if (!cfg || bt_diag_count(d)) {
        fprintf(stderr, "baton: cannot start: %zu configuration problem%s in %s:\n",
                bt_diag_count(d), bt_diag_count(d) == 1 ? "" : "s", dir);
        print_diag(d);
        bt_config_free(cfg);
        bt_diag_free(d);
        free(dir);
        return EXIT_CONFIG;
    }
    bt_diag_free(d);
    free(dir);
    catch_stop_signals();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_reload_signal;
    sigaction(SIGHUP, &sa, NULL);
    char err[BT_ERRLEN] = "";
    enum bt_err e =
        bt_server_run(cfg, listen, o->store, &stop_requested, &reload_requested, err, sizeof err);
    bt_config_free(cfg);
    if (e != BT_OK) {
        fprintf(stderr, "baton serve: %s\n", err);
        return e == BT_ECONFIG || e == BT_EINVAL ? EXIT_CONFIG : EXIT_FAILURE_;
    }
    return EXIT_ANSWERED;
}

/* baton token USER: a new console sign-in token for a configured user. The
 * store keeps only its sha256; the token is printed once and never logged. */
static int cmd_token(struct options *o, int argc, char **argv, int i)
{
    if (i + 1 != argc) {
        fprintf(stderr, "baton token: give one user name, e.g. baton token alice\n");
        return EXIT_USAGE;
    }
    const char *user = argv[i];
    bt_diag *d = bt_diag_new();
    char *dir = NULL;
    bt_config *cfg = load_config(o, d, &dir);
    json_t *u = json_object_get(bt_config_get(cfg, "users"), user);
    bt_diag_free(d);
    free(dir);
    if (!json_is_object(u)) {
        fprintf(stderr, "baton token: '%s' is not a user in baton.yaml\n", user);
        bt_config_free(cfg);
        return EXIT_REFUSED;
    }
    bt_config_free(cfg);
    bt_store *st = open_store(o);
    if (!st)
        return EXIT_FAILURE_;
    char a[33], b[33], token[72], hash[65], err[BT_ERRLEN];
    bt_random_id(a);
    bt_random_id(b);
    bt_fmt(token, sizeof token, "bt_%s%s", a, b);
    bt_sha256_hex(token, strlen(token), hash);
    enum bt_err e = bt_store_console_token_add(st, hash, user, err, sizeof err);
    bt_store_close(st);
    if (e != BT_OK) {
        fprintf(stderr, "baton token: %s\n", err);
        return EXIT_FAILURE_;
    }
    printf("%s\n", token);
    fprintf(stderr, "baton token: console token for %s (shown once; only its hash is kept)\n",
            user);
    return EXIT_ANSWERED;
}

int main(int argc, char **argv)
{
    struct options o = {0};
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        if ((strcmp(a, "--config") == 0 || strcmp(a, "--store") == 0 ||
             strcmp(a, "--log-level") == 0) &&
            i + 1 >= argc) {
            fprintf(stderr, "baton: %s needs a value\n", a);
            return EXIT_USAGE;
        }
        if (strcmp(a, "--config") == 0) {
            o.config_dir = argv[++i];
        } else if (strcmp(a, "--store") == 0) {
            o.store = argv[++i];
        } else if (strcmp(a, "--log-level") == 0) {
            int lvl = bt_log_level_parse(argv[++i]);
            if (lvl < 0) {
                fprintf(stderr, "baton: unknown log level '%s'\n", argv[i]);
                return EXIT_USAGE;
            }
            bt_log_set_level((enum bt_log_level)lvl);
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return EXIT_ANSWERED;
        } else {
            fprintf(stderr, "baton: unknown option '%s'\n", a);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[i++];
    if (strcmp(cmd, "version") == 0) {
        puts("baton 0.1.0");
        return EXIT_ANSWERED;
    }
    if (strcmp(cmd, "help") == 0) {
        usage(stdout);
        return EXIT_ANSWERED;
    }
    if (strcmp(cmd, "check") == 0) {
        if (i < argc) {
            fprintf(stderr, "baton: check takes no arguments\n");
            return EXIT_USAGE;
        }
        return cmd_check(&o);
    }
    if (strcmp(cmd, "audit") == 0)
        return cmd_audit(&o, argc, argv, i);
    if (strcmp(cmd, "worker") == 0)
        return cmd_worker(&o, argc, argv, i);
    if (strcmp(cmd, "serve") == 0)
        return cmd_serve(&o, argc, argv, i);
    if (strcmp(cmd, "token") == 0)
        return cmd_token(&o, argc, argv, i);
    if (strcmp(cmd, "migrate") == 0)
        return cmd_migrate(&o, argc, argv, i);
    if (strcmp(cmd, "approvals") == 0)
        return cmd_approvals(&o, argc, argv, i);
    if (strcmp(cmd, "approve") == 0 || strcmp(cmd, "deny") == 0 || strcmp(cmd, "cancel") == 0)
        return cmd_decide(&o, cmd, argc, argv, i);
    if (strcmp(cmd, "status") == 0)
        return cmd_status(&o, argc, argv, i);
    if (strcmp(cmd, "ask") == 0 || strcmp(cmd, "explain") == 0) {
        for (; i < argc && argv[i][0] == '-' && argv[i][1] == '-'; i++) {
            if (strcmp(argv[i], "--json") == 0) {
                o.json = true;
            } else if (strcmp(argv[i], "--as") == 0 && i + 1 < argc) {
                o.as_user = argv[++i];
                o.as_given = true;
            } else if (strcmp(argv[i], "--") == 0) {
                i++;
                break;
            } else {
                fprintf(stderr, "baton %s: unknown option '%s'\n", cmd, argv[i]);
                return EXIT_USAGE;
            }
        }
        if (i >= argc) {
            fprintf(stderr,
                    "baton %s: what should I do? e.g. baton %s \"how many assets do we "
                    "have?\"\n",
                    cmd, cmd);
            return EXIT_USAGE;
        }
        char *text = join_text(argc, argv, i);
        if (!text) {
            fprintf(stderr, "baton %s: the request is longer than %d bytes\n", cmd, MAX_TEXT);
            return EXIT_REFUSED;
        }
        int rc = cmd_request(&o, strcmp(cmd, "ask") == 0, text);
        free(text);
        return rc;
    }
    fprintf(stderr, "baton: unknown command '%s'\n", cmd);
    usage(stderr);
    return EXIT_USAGE;
}
