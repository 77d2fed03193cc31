/*
 * tools.h - stage B: the tool catalog (config/tools.yaml) and input
 * validation. Folder-internal to pipeline/.
 *
 * A catalog is read-only after bt_tools_new and thread-safe.
 */
#ifndef BT_TOOLS_H
#define BT_TOOLS_H

#include <jansson.h>

#include "bot/conf.h"
#include "connectors/connectors.h"

typedef struct bt_tools bt_tools;

/* Read and check tools.yaml: unique names, known connector (in conns) able to
 * serve the tool, risk, inputs (or inputs_from a named input set) whose
 * patterns compile, target naming an input, compensate naming a tool,
 * timeout_s in 1..3600. Problems go to d; NULL if there was any. */
bt_tools *bt_tools_new(const bt_config *cfg, const bt_connectors *conns, bt_diag *d);
void bt_tools_free(bt_tools *t);

/* The tool's definition (borrowed) with `inputs` resolved (inputs_from
 * merged in), or NULL when unknown. */
const json_t *bt_tools_get(const bt_tools *t, const char *name);

/* The definition that acts on target (borrowed asset object, may be NULL):
 * the tool's `via:` entry for the target's connection when there is one
 * (its connector and keys over the tool's), else the tool itself. */
const json_t *bt_tools_for(const bt_tools *t, const char *name, const json_t *target);

/* Validate inputs (borrowed object of strings) for tool `name`: every value
 * must match its declared pattern in full, unknown inputs are refused,
 * defaults fill absent optional ones. Returns a new object of final inputs.
 * When required inputs are missing, returns NULL, sets *missing (new array
 * of their names, when missing is non-NULL) and says so in err. On a bad
 * value returns NULL and err names the input and the value. */
json_t *bt_tools_validate(const bt_tools *t, const char *name, const json_t *inputs,
                          json_t **missing, char *err, size_t errlen);

#endif
