/* log.c - see log.h. */
#include "bot/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <string.h>

#include "bot/util.h"

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static enum bt_log_level log_level = BT_LOG_WARN;
static FILE *log_stream;

void bt_log_set_level(enum bt_log_level level)
{
    pthread_mutex_lock(&log_lock);
    log_level = level;
    pthread_mutex_unlock(&log_lock);
}

int bt_log_level_parse(const char *name)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

void bt_log_set_stream(FILE *stream)
{
    pthread_mutex_lock(&log_lock);
    log_stream = stream;
    pthread_mutex_unlock(&log_lock);
}

int bt_log_enabled(enum bt_log_level level)
{
    pthread_mutex_lock(&log_lock);
    int on = level >= log_level;
    pthread_mutex_unlock(&log_lock);
    return on;
}

void bt_log(enum bt_log_level level, const char *component, const char *request_id, const char *fmt,
            ...)
{
    if (!bt_log_enabled(level))
        return;
    static const char *names[] = {"debug", "info", "warn", "error"};
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char ts[40];
    bt_iso8601(bt_wall_ms(), ts, sizeof ts);

    json_t *o = json_object();
    json_object_set_new(o, "ts", json_string(ts));
    json_object_set_new(o, "level", json_string(names[level]));
    json_object_set_new(o, "component", json_string(component ? component : "baton"));
    if (request_id)
        json_object_set_new(o, "req", json_string(request_id));
    /* A message cut mid-character would not be valid UTF-8; jansson then
     * refuses it, so fall back to a marker rather than losing the line. */
    json_t *m = json_string(msg);
    json_object_set_new(o, "msg", m ? m : json_string("(message not valid UTF-8)"));
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!line)
        return;
    pthread_mutex_lock(&log_lock);
    FILE *out = log_stream ? log_stream : stderr;
    fputs(line, out);
    fputc('\n', out);
    fflush(out);
    pthread_mutex_unlock(&log_lock);
    free(line);
}
