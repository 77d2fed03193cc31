/*
 * log.h - structured logging: one JSON object per line on a stream (stderr by
 * default). The level is checked before anything is formatted.
 *
 * The sink is process-wide (a log is one per process, like Redis's
 * verbosity); it is guarded by a mutex so any thread may log.
 * Never pass a token, password or decision secret to bt_log.
 */
#ifndef BT_LOG_H
#define BT_LOG_H

#include <stdio.h>

enum bt_log_level { BT_LOG_DEBUG = 0, BT_LOG_INFO = 1, BT_LOG_WARN = 2, BT_LOG_ERROR = 3 };

/* Lowest level written (default BT_LOG_WARN, so CLI output stays clean). */
void bt_log_set_level(enum bt_log_level level);
/* Parse "debug", "info", "warn", "error"; returns -1 when unknown. */
int bt_log_level_parse(const char *name);
/* Where lines go (borrowed; default stderr). */
void bt_log_set_stream(FILE *stream);
int bt_log_enabled(enum bt_log_level level);

/* Write one line: {"ts":..,"level":..,"component":..,"req":..,"msg":..}.
 * request_id may be NULL. */
void bt_log(enum bt_log_level level, const char *component, const char *request_id, const char *fmt,
            ...) __attribute__((format(printf, 4, 5)));

#endif
