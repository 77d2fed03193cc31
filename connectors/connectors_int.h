/*
 * connectors_int.h - shared inside connectors/ only: the ops table each
 * connector type fills in, and small helpers the types share.
 *
 * A connector type is a table of four functions (like curl's struct
 * Curl_ssl): new builds the type's private state from its baton.yaml
 * section, check_tool checks a tool from tools.yaml against it, invoke runs
 * one step, free releases the state. invoke may be called from several
 * threads at once on the same state, so the state is read-only after new, or
 * protected by a lock the type documents.
 */
#ifndef BT_CONNECTORS_INT_H
#define BT_CONNECTORS_INT_H

#include <stdbool.h>

#include <jansson.h>

#include "bot/conf.h"
#include "bot/util.h"

/* Where a connector's configuration came from, for diagnostics. */
struct bt_connectors__where {
    const bt_yaml_doc *doc; /* baton.yaml */
    const json_t *conf;     /* the connector's mapping */
    const char *prefix;     /* "connectors.NAME" */
};

struct bt_connectors__ops {
    const char *type; /* the `type:` value in baton.yaml */
    /* Build the private state from the connector's mapping (borrowed).
     * Problems go to d (use bt_connectors__diag with w); NULL on any. */
    void *(*new)(const struct bt_connectors__where *w, const char *name, const char *store_location,
                 bt_diag *d);
    /* Check one tool (borrowed) of doc; report into d; false on a problem. */
    bool (*check_tool)(void *state, const bt_yaml_doc *doc, const json_t *tool, bt_diag *d);
    /* Run one step; the contract of bt_connectors_invoke. */
    enum bt_err (*invoke)(void *state, const json_t *tool, const json_t *inputs,
                          const json_t *target, json_t **result, char *err, size_t errlen);
    void (*free)(void *state);
};

extern const struct bt_connectors__ops bt_connectors__builtin_ops;
extern const struct bt_connectors__ops bt_connectors__local_ops;
extern const struct bt_connectors__ops bt_connectors__ansible_ops; /* type: ansible */

/* Report "file:line: PREFIX.key: message" at obj[key] of doc (key may be
 * NULL: then at obj itself, named PREFIX). */
void bt_connectors__diag(bt_diag *d, const bt_yaml_doc *doc, const json_t *obj, const char *prefix,
                         const char *key, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

/* Report a problem with key `key` of `tool` in the tools document, named
 * "tools[i].key" and mentioning the tool's name. */
void bt_connectors__tool_diag(bt_diag *d, const bt_yaml_doc *doc, const json_t *tool,
                              const char *key, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* The tool's name, or "(unnamed)"; borrowed. */
const char *bt_connectors__tool_name(const json_t *tool);

/* The names every "{name}" placeholder of a tool may use: the keys of
 * tool.inputs plus those of the input set tool.inputs_from (found at the root
 * of doc, `input_sets:`). True when name is one of them. */
bool bt_connectors__input_declared(const bt_yaml_doc *doc, const json_t *tool, const char *name);

/* An input's value as a string: strings as they are, integers in decimal
 * into buf. NULL when absent, null or of another type. */
const char *bt_connectors__input_str(const json_t *inputs, const char *name, char *buf,
                                     size_t buflen);

/* True when s is one of the strings of list (NULL-terminated). */
bool bt_connectors__in_list(const char *const *list, const char *s);

/* An absolute path without ".", ".." or empty components and without
 * control bytes, at most 4096 bytes. False for NULL. */
bool bt_connectors__abs_path_ok(const char *p);

/* tool[key] as a number: an integer, or a string of digits within
 * [min, max]; dflt when absent or unreadable. Clamped to [min, max]. */
long bt_connectors__tool_long(const json_t *tool, const char *key, long dflt, long min, long max);

/* ---- asset questions (assets_answer.c) ------------------------------------
 * count_assets, list_assets and get_asset as the builtin connector (from
 * the store) and the HTTP asset connectors (http, netbox) answer them: the
 * same filter keys, result shapes and texts by construction. Answers are
 * {data, text}; data is {total, breakdown[{os, role, count, label}], filter}
 * for a count, the list of assets for a list, the asset for a get. */

/* Copy a user-supplied value into a message: printable ASCII ('?' for
 * anything else), at most 64 bytes. */
void bt_connectors__shown(const char *s, char *out, size_t outlen);

/* A store filter (bt_store_assets_query's keys) from a step's inputs
 * (borrowed), into *out (new). Null values are skipped; limit and offset
 * are dropped unless paging; numbers may arrive as strings of digits.
 * limit_positive: a limit of 0 is refused. BT_EINVAL with err on a bad
 * key or value. */
enum bt_err bt_connectors__assets_filter(const json_t *inputs, bool paging, bool limit_positive,
                                         json_t **out, char *err, size_t errlen);

/* A count_assets answer (new reference). groups: one object {os, role,
 * count} per kind of asset; steals it. filter: from
 * bt_connectors__assets_filter; steals it. incomplete: NULL, or a note that
 * not every asset was read (" (only the first ...)"): it ends the text,
 * before the period, and data.truncated is set. */
json_t *bt_connectors__assets_count_answer(json_t *groups, json_t *filter, const char *incomplete);

/* A list_assets answer (new reference). assets: the page to answer with,
 * sorted; steals it. total: how many matched in all. filter: borrowed.
 * incomplete as for a count (text only). */
json_t *bt_connectors__assets_list_answer(json_t *assets, long long total, const json_t *filter,
                                          const char *incomplete);

/* The asset a get_asset step asks about: input 'host' (digits go into buf),
 * else the target's name. NULL with err set (the step's error is
 * BT_EINVAL) when there is neither. */
const char *bt_connectors__asset_wanted(const json_t *inputs, const json_t *target, char *buf,
                                        size_t buflen, char *err, size_t errlen);

/* "no asset named 'HOST' in the inventory" into err; returns BT_EINVAL. */
enum bt_err bt_connectors__asset_unknown(const char *host, char *err, size_t errlen);

/* A get_asset answer (new reference) for the baton asset a; steals a. */
json_t *bt_connectors__asset_answer(json_t *a);

/* ---- child processes (proc.c) ----------------------------------------------
 * The runner the local and ansible connectors share. It only runs: which
 * program may run, with which arguments and environment, and what the
 * step's result says stay with the caller. Thread-safe: every call keeps its
 * own pipes, buffers and child. */

/* What to run. */
struct bt_connectors__proc {
    const char *path;   /* absolute; execve'd as it is */
    char *const *argv;  /* NULL-terminated, argv[0] included (borrowed) */
    char *const *envp;  /* the child's whole environment (borrowed) */
    const char *cwd;    /* the child's working directory */
    int64_t timeout_ms; /* then SIGTERM to its process group, 2 s later SIGKILL */
    size_t output_max;  /* bytes kept of stdout, and of stderr; the rest is read and dropped */
    const char *what;   /* names the program in "cannot create pipes for WHAT" */
};

/* One captured stream. */
struct bt_connectors__capture {
    bt_buf buf;     /* at most output_max bytes */
    bool truncated; /* more came and was dropped */
};

/* What became of a run. */
struct bt_connectors__run {
    struct bt_connectors__capture out, err;
    int exit_code;      /* the exit status; 128 + signal when killed by one; -1 otherwise */
    int signal;         /* the signal that ended it, or 0 */
    bool status_lost;   /* it ended, but another waiter took its status */
    bool timed_out;     /* the deadline passed and the group was signalled */
    int exec_errno;     /* execve failed in the child with this errno; 0 if not */
    int64_t elapsed_ms; /* from fork until the pipes were given up */
};

/* Run p->path with argv and envp, stdin from /dev/null, in its own process
 * group, with every descriptor above 2 closed, stdout and stderr captured.
 * Fills r (always; release it with bt_connectors__run_free, whatever the
 * result). Returns BT_OK when the child was started and reaped, whatever
 * became of it (r says); BT_ECONNECTOR with err set when pipes could not be
 * made, fork failed, or the child did not go even after SIGKILL. Blocks for
 * at most timeout_ms plus about 8 s of grace. */
enum bt_err bt_connectors__proc_run(const struct bt_connectors__proc *p,
                                    struct bt_connectors__run *r, char *err, size_t errlen);
void bt_connectors__run_free(struct bt_connectors__run *r);

/* Free a NULL-terminated vector of strings (argv, envp); NULL is allowed. */
void bt_connectors__strv_free(char **v);

/* n bytes of program output as a new JSON string: bytes that are not valid
 * UTF-8, and NULs, become '?', so any output can be shown and stored. At
 * most max bytes (a cut never splits a character), and only the first
 * max_lines lines when max_lines > 0; sets *cut when something was dropped
 * (leaves it alone otherwise). */
json_t *bt_connectors__output_json(const char *s, size_t n, size_t max, long max_lines, bool *cut);

/* ---- circuit breaker (breaker.c) ------------------------------------------
 * One per configured connector, owned by the registry; the state machine is
 * described at the top of breaker.c. Thread-safe: all calls lock. */

#define BT_CONNECTORS__BREAKER_FAILURES 5
#define BT_CONNECTORS__BREAKER_COOLDOWN_MS 30000

enum bt_connectors__breaker_state {
    BT_CONNECTORS__BREAKER_CLOSED,
    BT_CONNECTORS__BREAKER_OPEN,
    BT_CONNECTORS__BREAKER_HALF_OPEN,
};

/* Milliseconds on a monotonic scale; injectable so tests need not sleep. */
typedef int64_t (*bt_connectors__clock_fn)(void *ctx);

struct bt_connectors__breaker;

/* What a call that was let through must hand back to _leave. */
struct bt_connectors__ticket {
    bool probe;        /* this call is the half-open trial */
    unsigned long gen; /* the breaker's generation when it entered */
};

struct bt_connectors__breaker_info {
    enum bt_connectors__breaker_state state;
    int failures;           /* closed: consecutive so far; else the count that opened it */
    int threshold;          /* failures that open it */
    long long times_opened; /* since creation */
    int64_t retry_in_ms;    /* open: until the next call is let through; else 0 */
};

/* New breaker for connector `name` (copied in messages). failures <= 0 and
 * cooldown_ms <= 0 mean the defaults above; clock NULL means bt_mono_ms. */
struct bt_connectors__breaker *bt_connectors__breaker_new(const char *name, int failures,
                                                          int64_t cooldown_ms,
                                                          bt_connectors__clock_fn clock,
                                                          void *clock_ctx);
void bt_connectors__breaker_free(struct bt_connectors__breaker *b);
/* Change the settings (values <= 0 keep the current one). */
void bt_connectors__breaker_configure(struct bt_connectors__breaker *b, int failures,
                                      int64_t cooldown_ms);
/* Before a call: BT_OK (go ahead; *t filled in) or BT_EUNAVAIL with err
 * naming the connector, why and when it will be tried again. */
enum bt_err bt_connectors__breaker_enter(struct bt_connectors__breaker *b,
                                         struct bt_connectors__ticket *t, char *err, size_t errlen);
/* After a call that _enter let through: its result code. */
void bt_connectors__breaker_leave(struct bt_connectors__breaker *b,
                                  const struct bt_connectors__ticket *t, enum bt_err rc);
/* True for the result codes that count as failures (BT_EUNAVAIL,
 * BT_ETIMEOUT): the service did not answer. */
bool bt_connectors__breaker_counts(enum bt_err rc);
void bt_connectors__breaker_info(struct bt_connectors__breaker *b,
                                 struct bt_connectors__breaker_info *out);
/* "closed", "open", "half_open". */
const char *bt_connectors__breaker_state_name(enum bt_connectors__breaker_state s);

/* ---- HTTP services (http.c, http_assets.c, http_automation.c) -------------
 * One libcurl client per connector of type http or netbox, built from the
 * keys they share (docs/connectors.md, "HTTP services"). The client keeps a
 * small pool of easy handles under a mutex, so connections are reused across
 * calls and threads, bounds the calls in flight (the bulkhead), retries what
 * is transient and translates every libcurl outcome into a bt_err with a
 * message that names the service and never the token. Thread-safe after
 * _new. */

extern const struct bt_connectors__ops bt_connectors__http_ops;   /* type: http */
extern const struct bt_connectors__ops bt_connectors__netbox_ops; /* type: netbox */
/* `type: http` with `api: automation` (http_assets.c dispatches on `api`). */
extern const struct bt_connectors__ops bt_connectors__http_automation_ops;

/* How the token (from the environment variable named by token_env) is sent. */
enum bt_connectors__http_auth {
    BT_CONNECTORS__HTTP_BEARER, /* Authorization: Bearer <token> */
    BT_CONNECTORS__HTTP_TOKEN,  /* Authorization: Token <token> (NetBox) */
};

struct bt_connectors__http;

/* Build a client from the shared keys of w->conf: base_url, token_env,
 * connect_timeout_ms, timeout_ms, max_body_bytes, verify_tls, ca_file,
 * max_concurrent, queue_wait_ms, retries, retry_base_ms, retry_cap_ms.
 * `type` and the NULL-terminated `extra` keys are the caller's to check;
 * any other key is reported as unknown. service names the kind of service
 * in messages ("asset service"). token_required: token_env must be given.
 * The token is read from the environment here, once, and kept only in
 * memory. NULL when there was a problem (each reported into d). */
struct bt_connectors__http *bt_connectors__http_new(const struct bt_connectors__where *w,
                                                    const char *name, const char *service,
                                                    enum bt_connectors__http_auth auth,
                                                    bool token_required, const char *const *extra,
                                                    bt_diag *d);
void bt_connectors__http_free(struct bt_connectors__http *h);

/* "asset service 'assets' (assets.example:8443)": how messages name the
 * service (borrowed; lives as long as h). */
const char *bt_connectors__http_label(const struct bt_connectors__http *h);

/* True when url is absolute and has base_url's scheme, host and port. */
bool bt_connectors__http_same_origin(const struct bt_connectors__http *h, const char *url);

/* Append s to b percent-encoded for a query value (RFC 3986 unreserved
 * characters are kept). */
void bt_connectors__http_query_escape(bt_buf *b, const char *s);

struct bt_connectors__http_call {
    const char *method; /* "GET" or "POST" */
    /* A path with its query, appended to base_url ("/?limit=100"), or an
     * absolute URL that is bt_connectors__http_same_origin. */
    const char *target;
    const json_t *body; /* POST: sent as JSON (borrowed); NULL for none */
    /* false: the request changes something, so it is retried only when it
     * never left (the connection could not be made). */
    bool idempotent;
    long timeout_ms;     /* per attempt; 0: the connector's timeout_ms */
    int64_t deadline_ms; /* bt_mono_ms() bound on the whole call, retries
                          * included; 0: none */
};

struct bt_connectors__http_reply {
    long status;  /* the last HTTP status, 0 when there was none */
    json_t *body; /* new reference or NULL: the parsed JSON of a 2xx answer,
                   * or of an error answer when it was JSON */
    int attempts; /* requests made */
    bool sent;    /* the last request may have reached the service */
};

/* Make one call. Returns
 *   BT_OK          2xx with a JSON object or array in reply->body
 *   BT_ENOENT      404 (err says so; the caller words it for the user)
 *   BT_EUNAVAIL    the service could not be reached or said it is
 *                  unavailable (502, 503, 429, reset mid-answer), after the
 *                  retries allowed; or the bulkhead stayed full for
 *                  queue_wait_ms
 *   BT_ETIMEOUT    no answer in time (or 504), after the retries allowed;
 *                  also a request that is not idempotent, may have reached
 *                  the service and got no usable answer (reset, 502): like a
 *                  timeout, its outcome is unknown, and the pipeline retries
 *                  BT_ETIMEOUT only for read-only tools
 *   BT_ECONNECTOR  a permanent failure: another 4xx or 5xx, a redirect,
 *                  malformed JSON, a Content-Type other than JSON, a body
 *                  larger than max_body_bytes, TLS verification
 * err names the service (bt_connectors__http_label) and says what happened;
 * never the token. The caller calls bt_connectors__http_reply_free. */
enum bt_err bt_connectors__http_request(struct bt_connectors__http *h,
                                        const struct bt_connectors__http_call *call,
                                        struct bt_connectors__http_reply *reply, char *err,
                                        size_t errlen);
void bt_connectors__http_reply_free(struct bt_connectors__http_reply *reply);

/* The values a command or an ansible module may be given: letters, digits
 * and @%+=:,./_- only. True when v (n bytes) has another character; what
 * then describes the first one ("a space", "the byte 0x0a", "';'"). */
bool bt_connectors__unsafe_char(const char *v, size_t n, char *what, size_t whatlen);

#endif
