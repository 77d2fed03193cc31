/*
 * chat.h - team chat for `baton serve`: Slack (Socket Mode) and Mattermost.
 *
 * baton connects out to each configured platform over WebSocket on the
 * server's libwebsockets loop, reads requests (mentions, direct messages,
 * messages in configured channels), answers in the request's thread and
 * carries approvals there: a plan card with Approve / Deny (and Release
 * step N at level 3) buttons that carry signed decision tokens, updated in
 * place as decisions are made (from any surface) and as the execution
 * moves.
 *
 * Threads. Everything that touches a socket or the loop's state runs on the
 * loop thread (bt_chat_start, _tick, _card, _task_done, the protocol
 * callback). Work that waits (Web API calls, the pipeline, the store) is a
 * task the server runs on one of its workers (bt_chat_task_run) with that
 * worker's pipeline; the result goes back to the loop (bt_chat_task_done).
 * A task reads only the immutable settings of the chat it came from.
 *
 * Configuration (baton.yaml, all optional; docs/slack.md, docs/mattermost.md):
 *   chat:
 *     slack:
 *       app_token_env: SLACK_APP_TOKEN   # xapp-..., connections:write
 *       bot_token_env: SLACK_BOT_TOKEN   # xoxb-...
 *       api_url: https://slack.com/api/  # the Web API (tests: a fake)
 *       channels: [C0123ABCD]            # read every message here too
 *     mattermost:
 *       url: https://mattermost.example.com
 *       token_env: MATTERMOST_TOKEN      # the bot account's access token
 *       callback_url: http://baton.example.com:8080/hooks/mattermost
 *       channels: [channel ids]
 *     update_interval_ms: 1000           # at most one card update per post
 * Tokens come only from the environment.
 */
#ifndef BT_CHAT_H
#define BT_CHAT_H
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <libwebsockets.h>

#include "bot/conf.h"
#include "bot/util.h"
#include "pipeline/pipeline.h"

typedef struct bt_chat bt_chat;
typedef struct bt_chat_task bt_chat_task;

/* How chat hands a task to the server's workers: false when the queue is
 * full (the task is then the caller's to retry or free). Called on the loop
 * thread. */
typedef bool (*bt_chat_submit_fn)(void *host, bt_chat_task *task);

/* Check the `chat:` section. Problems go to d; true when there were none. */
bool bt_chat_check_config(const bt_config *cfg, bt_diag *d);

/* Build the chat surfaces cfg configures (cfg must have checked). *out is
 * NULL when none is configured. Fails when a token's environment variable
 * is missing or empty. Call before any worker starts (it initialises
 * libcurl). */
enum bt_err bt_chat_new(const bt_config *cfg, bt_chat_submit_fn submit, void *host, bt_chat **out,
                        char *err, size_t errlen);
void bt_chat_free(bt_chat *c);

/* The libwebsockets protocol chat's client connections use: add it to the
 * context's protocol list. */
struct lws_protocols bt_chat_protocol(void);

/* Loop thread: start connecting (after the context exists). */
void bt_chat_start(bt_chat *c, struct lws_context *ctx);
/* Loop thread, a few times a second: reconnects, card updates due. */
void bt_chat_tick(bt_chat *c, int64_t now_ms);
/* Loop thread: the card of an approval changed (bt_pipeline_card's shape):
 * every chat post showing it is updated, at most once per
 * update_interval_ms per approval, always with the latest card. */
void bt_chat_card(bt_chat *c, const json_t *card);
/* Loop thread: stop (close the connections); tasks in flight still finish. */
void bt_chat_stop(bt_chat *c);

/* Worker thread: run the task with this worker's pipeline. Cards it made
 * or changed are appended to cards (so the console sees them too). */
void bt_chat_task_run(bt_chat_task *t, const bt_config *cfg, bt_pipeline *p, json_t *cards);
/* Loop thread: the task ran (or was dropped); frees it. */
void bt_chat_task_done(bt_chat *c, bt_chat_task *t);

/* HTTP callbacks (Mattermost's interactive buttons). True when uri is one
 * of chat's paths and the request should be read (POST). */
bool bt_chat_http_path(const bt_chat *c, const char *uri);
/* A whole POST body for such a path: a task to run (NULL when the body is
 * refused at once; *status and *reply then hold the answer, reply owned by
 * the caller). Loop thread. */
bt_chat_task *bt_chat_http_task(bt_chat *c, const char *uri, const char *body, size_t len,
                                unsigned int *status, char **reply);
/* After bt_chat_task_run of an HTTP task: the answer to send (status and a
 * JSON body, new string). Worker or loop thread. */
char *bt_chat_task_http_reply(const bt_chat_task *t, unsigned int *status);

/* State for /healthz and /metrics: {slack: {connected, connections,
 * events, reconnects}, mattermost: {...}} (new object). Loop thread. */
json_t *bt_chat_status(const bt_chat *c);
#endif
