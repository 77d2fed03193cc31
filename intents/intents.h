/*
 * intents.h - stage A: classify a request against the intent catalog.
 *
 * The catalog is data (config/intents/NAME.yaml), compiled once: PCRE2 patterns
 * with JIT and match limits, whose named groups become entities; keywords and
 * synonyms so paraphrases match; typo tolerance against the known vocabulary
 * (catalog words, service names, inventory names); hosts resolved against the
 * inventory by name, hostname or IP.
 *
 * A compiled catalog is read-only after bt_intents_new and may be shared by
 * any number of threads calling bt_intents_classify at once.
 */
#ifndef BT_INTENTS_H
#define BT_INTENTS_H

#include <stddef.h>

#include <jansson.h>

#include "bot/conf.h"

typedef struct bt_intents bt_intents;

/* Compile the catalog in cfg's intent files. assets (borrowed array of asset
 * objects with name, hostname, ip, services) supplies the host vocabulary
 * and is copied. Every problem in the catalog goes to d with file and line;
 * returns NULL when any intent file has a problem. */
bt_intents *bt_intents_new(const bt_config *cfg, const json_t *assets, bt_diag *d);
void bt_intents_free(bt_intents *in);

/* Number of intents in the catalog. */
size_t bt_intents_count(const bt_intents *in);

/* The i-th intent definition in catalog order (borrowed), NULL past the end. */
const json_t *bt_intents_at(const bt_intents *in, size_t i);

/* The definition of intent `name` as written in YAML (borrowed, read-only;
 * NULL if unknown): name, category, description, examples, plan, help, ... */
const json_t *bt_intents_get(const bt_intents *in, const char *name);

/* Classify one request. text must be valid UTF-8 of at most 4096 bytes
 * (else NULL and err says why). Returns a new decision object:
 *   intent       string  catalog name, or "unknown"
 *   category     string  asset_management | monitoring | automation |
 *                        configuration | troubleshooting | information |
 *                        unknown
 *   confidence   real    0..1
 *   entities     object  name -> string (host, service, path, port, os, ...)
 *   targets      array   inventory asset names the request names (resolved
 *                        from host mentions by name, hostname or IP)
 *   unresolved   array   host-like words that matched no asset
 *   corrections  array   [{from, to}] typo corrections that were applied
 *   normalized   string  the text after normalisation and corrections
 *   question     bool    the request asks how to do something (help), it is
 *                        not an action
 *   suggestions  array   for unknown: up to 3 example requests that are near
 *   match        object  how it was decided (for `baton explain`): pattern
 *                        (1-based index of the winning intent's pattern, or
 *                        null when keywords alone decided), keywords (those
 *                        found), score, and for unknown nearest (the best
 *                        intent below the confidence threshold)
 * Thread-safe. */
json_t *bt_intents_classify(const bt_intents *in, const char *text, char *err, size_t errlen);

#endif
