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

#endif
