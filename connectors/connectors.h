/*
 * connectors.h - the services baton does its work through.
 *
 * Connectors are named in baton.yaml (`connectors:`), each with a type:
 *   builtin   asset connector over the store's inventory (the embedded default)
 *   local     automation runner: allow-listed commands run as argv on the
 *             baton host, never through a shell, with timeout and output cap;
 *             only for assets whose connection is "local"
 * (http, netbox and ansible come with the connectors issue.)
 *
 * Tools (config/tools.yaml) name a connector and an operation; the pipeline
 * calls bt_connectors_invoke with the tool definition and validated inputs.
 *
 * Threads: bt_connectors_invoke may be called from several threads at once;
 * each call that needs the store opens/uses its own bt_store handle via the
 * location given at creation.
 */
#ifndef BT_CONNECTORS_H
#define BT_CONNECTORS_H

#include <stdbool.h>

#include <jansson.h>

#include "bot/conf.h"
#include "bot/util.h"

typedef struct bt_connectors bt_connectors;

/* Read and check inventory.yaml (`assets:` list). Every asset needs name,
 * hostname, ip (dotted IPv4), os (windows|linux), os_version, role,
 * environment (production|staging|dev), status (active|inactive),
 * datacenter, tags (list), cpu, ram_gb, connection
 * (local|ssh|winrm|none); optional services (list of service names).
 * Names, hostnames and IPs are unique. Problems go to d (file:line: key).
 * Returns a new array of asset objects, or NULL when any problem was found. */
json_t *bt_connectors_inventory(const bt_config *cfg, bt_diag *d);

/* Build every connector in cfg's `connectors:` section and check it
 * (allow-list entries exist and are absolute paths, ...). store_location is
 * the store the builtin asset connector reads (copied). Problems go to d;
 * NULL when any problem was found. */
bt_connectors *bt_connectors_new(const bt_config *cfg, const char *store_location, bt_diag *d);
void bt_connectors_free(bt_connectors *c);

/* True when a connector of that name is configured. */
bool bt_connectors_has(const bt_connectors *c, const char *name);
/* The configured type of connector `name` ("builtin", "local", ...) or NULL. */
const char *bt_connectors_type(const bt_connectors *c, const char *name);

/* Check that connector `name` can serve `tool` (borrowed tool definition
 * from tools.yaml: operation known to the connector, command allow-listed).
 * Problems go to d at the tool's location in doc. */
bool bt_connectors_check_tool(const bt_connectors *c, const bt_yaml_doc *doc, const json_t *tool,
                              bt_diag *d);

/* Run one step.
 *   tool    borrowed tool definition (name, connector, operation, command,
 *           timeout_s, output_max, ok_exit, ...)
 *   inputs  borrowed object of validated input values (strings)
 *   target  borrowed asset object the step acts on, or NULL
 * On success *result is a new object:
 *   builtin: {"data": <operation result>, "text": "<one-line summary>"}
 *   local:   {"exit_code": n, "stdout": "...", "stderr": "...",
 *             "truncated": bool, "duration_ms": n}
 * Errors: BT_EDENIED (not allow-listed, target not local, unsafe argument),
 * BT_ETIMEOUT (killed after timeout_s; partial output in err), BT_EINVAL
 * (bad inputs), BT_ECONNECTOR (the command could not run or exited with a
 * code not in ok_exit: *result is still set then, with the output),
 * BT_EUNAVAIL (no such connector). err says what happened in words a user
 * can act on. */
enum bt_err bt_connectors_invoke(bt_connectors *c, const json_t *tool, const json_t *inputs,
                                 const json_t *target, json_t **result, char *err, size_t errlen);

#endif
