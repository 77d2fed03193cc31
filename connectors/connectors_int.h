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

#endif
