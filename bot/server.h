/*
 * server.h - `baton serve`: one HTTP port with the console's WebSocket JSON
 * protocol at /ws, /healthz and /metrics (Prometheus text).
 *
 * Threads: one event-loop thread (the caller of bt_server_run) owns every
 * libwebsockets object. A pool of workers, each with its own bt_pipeline
 * built from the same configuration, runs requests, decisions and store
 * look-ups; results come back through a locked queue and
 * lws_cancel_service(), so a slow connector never delays other users.
 */
#ifndef BT_SERVER_H
#define BT_SERVER_H
#include <signal.h>
#include <stdbool.h>

#include "bot/conf.h"
#include "bot/util.h"

/* Check the `server:` section of baton.yaml (all keys optional):
 *   listen            "ADDR:PORT" (default 127.0.0.1:8080)
 *   allowed_origins   list of exact Origin values also accepted besides
 *                     the server's own ("http://" + Host)
 *   max_frame_bytes   1024..1048576 (default 65536)
 *   rate_limit        requests per user per minute, 1..10000 (default 60)
 *   idle_timeout_s    10..86400 (default 300)
 *   workers           1..64 (default 4)
 *   job_runners       0..16 (default 1): threads running background
 *                     executions from the job queue (0: leave them to
 *                     `baton worker` processes)
 * Problems go to d; returns true when there were none. */
bool bt_server_check_config(const bt_config *cfg, bt_diag *d);

/* Run the daemon until *stop becomes non-zero (set from a SIGTERM/SIGINT
 * handler), then stop accepting, let the workers finish the jobs in hand
 * (bounded wait) and return. Whenever *reload becomes non-zero (SIGHUP) the
 * configuration directory is read again and used when it checks (reload
 * may be NULL). cfg is borrowed and must be valid (checked);
 * listen_override (or NULL) replaces server.listen; store_override (or
 * NULL) replaces store.location. Returns BT_OK after a clean stop, else an
 * error with the reason in err. Thread: the caller becomes the loop thread. */
enum bt_err bt_server_run(bt_config *cfg, const char *listen_override, const char *store_override,
                          volatile sig_atomic_t *stop, volatile sig_atomic_t *reload, char *err,
                          size_t errlen);
#endif
