/*
 * connectors.h - the services baton does its work through.
 *
 * Connectors are named in baton.yaml (`connectors:`), each with a type:
 *   builtin   asset connector over the store's inventory (the embedded default)
 *   local     automation runner: allow-listed commands run as argv on the
 *             baton host, never through a shell, with timeout and output cap;
 *             only for assets whose connection is "local"
 *   ansible   automation runner: one module (`ansible`) or a playbook
 *             (`ansible-playbook`) run as argv against the target asset
 *             (connection local, ssh or winrm), with timeout and output cap;
 *             result read from ansible's tree callback
 *   http      an HTTP service: `api: assets` (OpsConductor-style asset
 *             service: count_assets, list_assets, get_asset as builtin) or
 *             `api: automation` (execute_plan: POST {base}/execute-plan)
 *   netbox    asset connector over NetBox's REST API (devices and virtual
 *             machines), answering as builtin does
 *             (http and netbox share connectors/http.c: libcurl with
 *             timeouts, capped bodies, retries of transient failures only,
 *             a bulkhead; tokens only from the environment)
 *
 * Tools (config/tools.yaml) name a connector and an operation; the pipeline
 * calls bt_connectors_invoke with the tool definition and validated inputs.
 *
 * Threads: bt_connectors_invoke may be called from several threads at once;
 * each call that needs the store borrows a bt_store handle of its own from a
 * small mutex-guarded pool (opening one via the location given at creation
 * when the pool is empty), so no two calls ever share a handle. The other
 * functions are for the thread that builds and frees the set.
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
 * (local|ssh|winrm|none); optional services (list of service names),
 * description and owner (strings); no other keys. Names, hostnames and IPs
 * are unique (ignoring case). Problems go to d as
 * "inventory.yaml:line: assets[i].key: message", every one of them.
 * Returns a new array of asset objects (copies; services always present), or
 * NULL when any problem was found. */
json_t *bt_connectors_inventory(const bt_config *cfg, bt_diag *d);

/* Build every connector in cfg's `connectors:` section and check it
 * (known type, known keys, allow-list entries are absolute paths: whether
 * the program exists is checked when it is run, so a host without an
 * optional tool still loads). No `connectors:` section means no connectors.
 * store_location is the store the builtin asset connector reads (copied;
 * may be NULL: its inventory operations then fail with BT_EUNAVAIL).
 * Problems go to d as "baton.yaml:line: connectors.NAME.key: ..."; NULL when
 * any problem was found. */
bt_connectors *bt_connectors_new(const bt_config *cfg, const char *store_location, bt_diag *d);
void bt_connectors_free(bt_connectors *c);

/* True when a connector of that name is configured. */
bool bt_connectors_has(const bt_connectors *c, const char *name);
/* The configured type of connector `name` ("builtin", "local", ...) or NULL. */
const char *bt_connectors_type(const bt_connectors *c, const char *name);

/* Check that the tool's connector exists and can serve `tool` (borrowed
 * tool definition from tools.yaml: operation known to the connector; for
 * local: command is a list of strings, command[0] allow-listed, every
 * "{name}" placeholder names an input of the tool or of its inputs_from set
 * in doc's `input_sets:`, ok_exit / output_lines / output_max / runs_on
 * valid). Problems go to d at the tool's location in doc, named
 * "tools[i].key". Returns false when there was a problem. */
bool bt_connectors_check_tool(const bt_connectors *c, const bt_yaml_doc *doc, const json_t *tool,
                              bt_diag *d);

/* Run one step.
 *   tool    borrowed tool definition (name, connector, operation, command,
 *           timeout_s, output_max, output_lines, ok_exit, runs_on, target)
 *   inputs  borrowed object of validated input values (strings; integers
 *           are accepted too), or NULL for none
 *   target  borrowed asset object the step acts on, or NULL
 * On success *result is a new object:
 *   builtin: {"data": <operation result>, "text": "<one-line summary>"}
 *            count_assets data {total, breakdown[{os, role, count, label}],
 *            filter}; list_assets data [asset...]; get_asset data asset;
 *            tcp_check data {reachable, address, port, ms, error?} (an
 *            unreachable port is a successful check: BT_OK, reachable false)
 *   local:   {"command": [argv...], "exit_code": n, "signal": n (only when
 *             killed by one; exit_code is then 128+n), "stdout": "...",
 *             "stderr": "...", "truncated": bool, "timed_out": bool,
 *             "duration_ms": n}
 *            (output bytes that are not UTF-8, and NULs, become '?')
 * Errors: BT_EDENIED (not allow-listed, target not local, unsafe argument),
 * BT_ETIMEOUT (killed after timeout_s: *result is set, with the partial
 * output, and err quotes its first line), BT_EINVAL (bad or missing inputs,
 * unknown asset for get_asset: "no asset named 'x' in the inventory"),
 * BT_ECONNECTOR (the command is not installed: *result NULL; execve
 * failed, it exited with a code not in ok_exit, or died of a signal:
 * *result is set, with the output; store failures of builtin),
 * BT_EUNAVAIL (no such connector, or builtin without a store). *result is
 * NULL whenever it is not said to be set. err says what happened in words a
 * user can act on; it never contains a newline. Thread-safe. */
enum bt_err bt_connectors_invoke(bt_connectors *c, const json_t *tool, const json_t *inputs,
                                 const json_t *target, json_t **result, char *err, size_t errlen);

/* ---- circuit breakers ------------------------------------------------------
 * Every connector has one. bt_connectors_invoke counts consecutive transient
 * failures (BT_EUNAVAIL, BT_ETIMEOUT) per connector; after `failures` of them
 * the circuit opens and calls fail at once with BT_EUNAVAIL and a message
 * such as "connector 'local' is unavailable (circuit open after 5 failures;
 * retrying in 27 s)". After cooldown_s one trial call is let through
 * (half-open): success closes the circuit, a transient failure opens it for
 * another cooldown. Any other outcome (success, a refused or failed command)
 * resets the count. Defaults: 5 failures, 30 s. */

/* Set every connector's breaker (values <= 0 keep the current setting).
 * Thread-safe. */
void bt_connectors_set_breaker(bt_connectors *c, int failures, int cooldown_s);

/* The breakers' state, for /metrics and status pages: a new array of
 * {connector, state ("closed" | "open" | "half_open"), failures (closed:
 * consecutive so far; otherwise the count that opened it), threshold,
 * times_opened, retry_in_ms (open: until the next trial call)}.
 * Thread-safe. */
json_t *bt_connectors_breakers(bt_connectors *c);

#endif
