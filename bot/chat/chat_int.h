/*
 * chat_int.h - what chat.c and the surfaces (slack.c, mattermost.c) share
 * inside bot/chat/. Never included from another folder.
 *
 * A surface fills in a struct bt_chat__surface_ops. chat.c owns the loop
 * glue (the lws protocol, card updates, tasks) and calls the surface for
 * what is platform-specific: its connection, its events and its rendering.
 */
#ifndef BT_CHAT_INT_H
#define BT_CHAT_INT_H

#include "bot/chat/chat.h"

struct bt_chat__surface;

/* The head of every client connection's user data: the callback finds the
 * surface through it. */
struct bt_chat__conn {
    struct bt_chat__surface *sf;
};

struct bt_chat__surface_ops {
    const char *name; /* "slack", "mattermost": chat_posts.surface */
    /* loop thread */
    void (*start)(struct bt_chat__surface *sf);
    void (*tick)(struct bt_chat__surface *sf, int64_t now_ms);
    void (*stop)(struct bt_chat__surface *sf);
    int (*callback)(struct bt_chat__surface *sf, struct lws *wsi, enum lws_callback_reasons reason,
                    struct bt_chat__conn *conn, void *in, size_t len);
    void (*done)(struct bt_chat__surface *sf, bt_chat_task *t);
    json_t *(*status)(const struct bt_chat__surface *sf);
    void (*free)(struct bt_chat__surface *sf);
    /* worker thread */
    void (*run)(struct bt_chat__surface *sf, bt_chat_task *t, bt_pipeline *p, json_t *cards);
    /* Show card in one of the surface's posts ({channel, post, thread}). */
    enum bt_err (*update_post)(struct bt_chat__surface *sf, bt_pipeline *p, const json_t *post,
                               const json_t *card, char *err, size_t errlen);
};

struct bt_chat__surface {
    const struct bt_chat__surface_ops *ops;
    bt_chat *chat;
    void *impl;
};

enum bt_chat__task_kind {
    BT_CHAT__T_SURFACE, /* the surface's own: op says which */
    BT_CHAT__T_CARD,    /* update every post of an approval */
    BT_CHAT__T_HTTP     /* an HTTP callback (op: the surface's) */
};

struct bt_chat_task {
    enum bt_chat__task_kind kind;
    bt_chat *chat;
    struct bt_chat__surface *sf; /* NULL for T_CARD */
    int op;
    json_t *in;  /* what the task works on (owned) */
    json_t *out; /* what it found, for done (owned, may stay NULL) */
    unsigned int http_status;
    char *http_reply;
};

/* ---- chat.c --------------------------------------------------------- */

struct lws_context *bt_chat__ctx(const bt_chat *c);
/* The retry/ping policy client connections use. */
const lws_retry_bo_t *bt_chat__retry(void);
/* A new task for sf (in is stolen). */
bt_chat_task *bt_chat__task(struct bt_chat__surface *sf, int op, json_t *in);
/* Hand a task to the workers; false (task freed) when the queue is full. */
bool bt_chat__submit(bt_chat *c, bt_chat_task *t);
void bt_chat__task_free(bt_chat_task *t);

/* Worker: claim a platform event in the store before acting on it (see
 * bt_store_chat_claim). False when it was handled already, or when the
 * claim could not be made (logged under surface): then nothing is done,
 * rather than risk doing it twice. */
bool bt_chat__claim(bt_pipeline *p, const char *surface, const char *key);

/* A token from the environment variable named by key in settings (its
 * value), else the default name; NULL with err when unset or empty. */
char *bt_chat__env_token(const json_t *settings, const char *key, const char *dflt, char *err,
                         size_t errlen);

/* One JSON request over HTTP(S) with libcurl on the calling thread:
 * method "GET" | "POST" | "PUT", bearer token (or NULL), body (or NULL).
 * Connect timeout 5 s, whole request 15 s, reply at most 4 MiB. A 429 is
 * waited out (Retry-After, at most 30 s, 1 s when absent) and the request
 * sent again, at most 3 times in all; *waited_ms (may be NULL) says how
 * long it waited. *status is the HTTP status, *out the parsed reply (NULL
 * when it is not JSON). Fails (BT_EUNAVAIL / BT_ETIMEOUT) only when no
 * answer came; err never contains the token. */
enum bt_err bt_chat__http(const char *method, const char *url, const char *bearer,
                          const json_t *body, long *status, json_t **out, int64_t *waited_ms,
                          char *err, size_t errlen);

/* The host part of an http(s) URL after its scheme (borrowed, its length
 * in *n): up to ':', '/', '?', '#' or the end; an IPv6 literal keeps its
 * brackets. */
const char *bt_chat__url_host(const char *rest, size_t *n);
/* https://..., or http:// to this machine only (127.0.0.1, localhost,
 * [::1]: for tests). */
bool bt_chat__url_acceptable(const char *url);

/* A card's wording, the same on every surface: its title ("Approval
 * needed", "Done", ...); whether decisions are still open (pending or
 * releasing); a step's state as shown ("not run" once the plan can no
 * longer run); the execution's progress bar "▰▰▱… 1/2 · running" (new
 * string); the expiry as "HH:MM UTC" ("" without one). */
const char *bt_chat__card_title(const json_t *card);
/* "a, b, c" of a string array, or none when it has no string (new). */
char *bt_chat__joined(const json_t *list, const char *none);
bool bt_chat__card_open(const json_t *card);
const char *bt_chat__step_state(const json_t *card, const json_t *step);
char *bt_chat__progress(const json_t *execution);
void bt_chat__expires(const json_t *card, char out[32]);

/* Plain text that a chat platform shows as is: at most max bytes, cut at a
 * character boundary, with "…" when cut (new string). */
char *bt_chat__clip(const char *s, size_t max);

/* ---- surfaces ------------------------------------------------------- */

/* Build from the checked settings object; NULL with err on failure. */
struct bt_chat__surface *bt_chat__slack_new(bt_chat *c, const json_t *settings, char *err,
                                            size_t errlen);
bool bt_chat__slack_check(const bt_config *cfg, const json_t *settings, bt_diag *d);
struct bt_chat__surface *bt_chat__mattermost_new(bt_chat *c, const json_t *settings, char *err,
                                                 size_t errlen);
bool bt_chat__mattermost_check(const bt_config *cfg, const json_t *settings, bt_diag *d);
/* Mattermost's HTTP callback path (or NULL) and how it makes a task. */
const char *bt_chat__mattermost_path(const struct bt_chat__surface *sf);
bt_chat_task *bt_chat__mattermost_http(struct bt_chat__surface *sf, const char *body, size_t len,
                                       unsigned int *status, char **reply);

#endif
