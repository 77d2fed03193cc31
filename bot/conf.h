/*
 * conf.h - configuration files: YAML read with libyaml into jansson trees that
 * remember the line each node came from, a list of diagnostics
 * ("file:line: key: message"), and the set of files that make up a baton
 * configuration directory:
 *
 *   DIR/baton.yaml       store, connectors, policy, users and roles
 *   DIR/tools.yaml       the tool catalog
 *   DIR/inventory.yaml   the built-in asset inventory
 *   DIR/intents/NAME.yaml   the intent catalog (read in name order)
 *
 * Parsing and checking are separate passes: this module parses; each module
 * checks its own part (intents, tools, policy, inventory) and reports into a
 * bt_diag with the file and line from here.
 */
#ifndef BT_CONF_H
#define BT_CONF_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

/* ---- diagnostics ---------------------------------------------------- */

typedef struct bt_diag bt_diag;

bt_diag *bt_diag_new(void);
void bt_diag_free(bt_diag *d);
/* Add "file:line: key: message" (file may be NULL, line 0 = unknown, key may
 * be NULL or "" to omit). */
void bt_diag_add(bt_diag *d, const char *file, int line, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
size_t bt_diag_count(const bt_diag *d);
/* The i-th formatted problem (borrowed, valid until bt_diag_free). */
const char *bt_diag_get(const bt_diag *d, size_t i);

/* ---- one YAML file as a jansson tree -------------------------------- */

typedef struct bt_yaml_doc bt_yaml_doc;

/* Parse a YAML file (one document; at most 4 MiB, nesting at most 64 deep).
 * Mappings become objects (keys must be unique strings), sequences arrays;
 * plain scalars become null (~, null, empty), booleans (true/false),
 * integers, reals or strings; quoted scalars are always strings. Anchors,
 * aliases and tags other than the core ones are refused.
 * Returns NULL and adds a diagnostic on any problem. */
bt_yaml_doc *bt_yaml_load(const char *path, bt_diag *d);
/* Same from memory; name is used in diagnostics. */
bt_yaml_doc *bt_yaml_parse(const char *name, const char *text, size_t len, bt_diag *d);
void bt_yaml_free(bt_yaml_doc *doc);

/* Root of the tree (borrowed; lives as long as doc). NULL for an empty file. */
json_t *bt_yaml_root(const bt_yaml_doc *doc);
/* File name given at load (borrowed). */
const char *bt_yaml_name(const bt_yaml_doc *doc);
/* Line (1-based) where node started, 0 if unknown. Works for objects, arrays
 * and non-singleton scalars; for true/false/null use the parent. */
int bt_yaml_line(const bt_yaml_doc *doc, const json_t *node);
/* Line of value under key in object obj (the value's line, else obj's). */
int bt_yaml_key_line(const bt_yaml_doc *doc, const json_t *obj, const char *key);

/* Convenience: report a problem at a node of doc. */
void bt_diag_at(bt_diag *d, const bt_yaml_doc *doc, const json_t *node, const char *key,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* ---- a configuration directory -------------------------------------- */

typedef struct bt_config bt_config;

/* Find the configuration directory: explicit if non-NULL, else
 * $BATON_CONFIG, else ./config, else /etc/baton. Returns a new string. */
char *bt_config_find_dir(const char *explicit_dir);

/* Parse every file of a configuration directory. Missing required files
 * (baton.yaml, tools.yaml, inventory.yaml, at least one intents/NAME.yaml) and
 * parse errors are added to d. Returns NULL only when nothing usable could be
 * read (directory missing); otherwise a config whose absent files have NULL
 * docs. */
bt_config *bt_config_load(const char *dir, bt_diag *d);
void bt_config_free(bt_config *cfg);

const char *bt_config_dir(const bt_config *cfg);
/* Borrowed documents; NULL when the file was missing or unparsable. */
const bt_yaml_doc *bt_config_main(const bt_config *cfg);
const bt_yaml_doc *bt_config_tools(const bt_config *cfg);
const bt_yaml_doc *bt_config_inventory(const bt_config *cfg);
size_t bt_config_intent_count(const bt_config *cfg);
const bt_yaml_doc *bt_config_intent_doc(const bt_config *cfg, size_t i);

/* Look up a dotted path ("store.path") in baton.yaml; borrowed or NULL. */
json_t *bt_config_get(const bt_config *cfg, const char *dotted);

/* ---- small checking helpers for the per-module check passes --------- */

/* Each checks obj[key] and reports "key: ..." into d when wrong. They return
 * the value (borrowed) when present and of the right type, else NULL. A
 * missing required key is reported; a missing optional one is not. */
const char *bt_check_string(bt_diag *d, const bt_yaml_doc *doc, const json_t *obj, const char *key,
                            bool required);
json_t *bt_check_array(bt_diag *d, const bt_yaml_doc *doc, const json_t *obj, const char *key,
                       bool required);
json_t *bt_check_object(bt_diag *d, const bt_yaml_doc *doc, const json_t *obj, const char *key,
                        bool required);
/* Integer in [min, max]; returns true and sets *out when present and valid;
 * leaves *out alone when absent and optional. */
bool bt_check_int(bt_diag *d, const bt_yaml_doc *doc, const json_t *obj, const char *key,
                  bool required, long long min, long long max, long long *out);
/* How a value's type reads in a message: "a mapping", "a list", "a string",
 * "an integer", "a number", "a boolean", "empty". */
const char *bt_conf_type_name(const json_t *v);

/* Report keys of obj not in the NULL-terminated allowed list ("unknown key"). */
void bt_check_keys(bt_diag *d, const bt_yaml_doc *doc, const json_t *obj,
                   const char *const *allowed);

#endif
