/*
 * answer.h - stage D: render results, plans, questions and refusals as text
 * for a person, and as table data for front-ends that draw tables.
 * Folder-internal to pipeline/. Every function returns a new heap string.
 */
#ifndef BT_ANSWER_H
#define BT_ANSWER_H

#include <jansson.h>

/* The answer to a request whose plan ran: one section per step (asset
 * counts as a sentence, asset lists as a table, command output verbatim,
 * failures with their reason). */
char *bt_answer_results(const json_t *plan, const json_t *execution);

/* Table data for an execution whose steps listed assets, as
 * {columns:[...], rows:[[...]]} (new), or NULL when there is none. */
json_t *bt_answer_table(const json_t *execution);

/* A plan held for approval: steps, risk, level, who may decide, expiry. */
char *bt_answer_approval(const json_t *plan, const json_t *approval, const char *approval_id);

/* A request baton cannot handle, politely, with suggestions. */
char *bt_answer_unknown(const json_t *decision);

/* How to ask for intent (its `help` and examples). */
char *bt_answer_help(const json_t *intent);

/* What baton can do: one line per category with examples. intents is an
 * array of intent definitions (borrowed). */
char *bt_answer_capabilities(const json_t *intents);

/* A level name: "none", "confirm", "plan review", "step by step". */
const char *bt_answer_level_name(int level);

#endif
