/*
 * util.h - the few things every baton module needs: the error enum, memory
 * helpers that abort on exhaustion, a capped growable buffer, clocks, hashing
 * and small parsers that replace the banned libc calls (atoi, strcpy, ...).
 */
#ifndef BT_UTIL_H
#define BT_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* Error codes. Values are never renumbered: they appear in logs and in the
 * exit codes of the CLI. Human detail travels in an error buffer. */
enum bt_err {
    BT_OK = 0,
    BT_ENOMEM = 1,      /* out of memory */
    BT_EINVAL = 2,      /* invalid argument or input */
    BT_ENOENT = 3,      /* no such thing */
    BT_EIO = 4,         /* I/O error */
    BT_EPARSE = 5,      /* malformed input (YAML, JSON, ...) */
    BT_ESTORE = 6,      /* store failure */
    BT_EDENIED = 7,     /* refused by policy or allow-list */
    BT_ETIMEOUT = 8,    /* a deadline passed */
    BT_ETOOBIG = 9,     /* a cap was exceeded */
    BT_ECONNECTOR = 10, /* a connector failed */
    BT_EVERSION = 11,   /* schema or format version not supported */
    BT_ECORRUPT = 12,   /* data is damaged */
    BT_EUNAVAIL = 13,   /* service unavailable (breaker open, not configured) */
    BT_ECONFIG = 14,    /* configuration is invalid */
};

/* Static English text for an error code; never NULL. */
const char *bt_strerror(enum bt_err err);

/* Size of the error buffers passed around with (char *err, size_t errlen). */
#define BT_ERRLEN 512

/* Memory: these abort with a message on exhaustion, so callers never check. */
void *bt_malloc(size_t n);
void *bt_calloc(size_t count, size_t size);
void *bt_realloc(void *p, size_t n);
char *bt_strdup(const char *s);
char *bt_strndup(const char *s, size_t n);
/* printf into a new heap string (caller frees). */
char *bt_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* snprintf that always terminates and reports truncation: returns true when
 * the whole string fitted. */
bool bt_fmt(char *dst, size_t dstlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Copy src into dst (size dstlen), always terminated; true if it fitted. */
bool bt_strlcpy(char *dst, const char *src, size_t dstlen);

/* A growable byte buffer with a hard cap (max; 0 means 16 MiB). Always keeps
 * a terminating NUL after len bytes. Initialise with BT_BUF_INIT(max). */
typedef struct bt_buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max;
} bt_buf;
#define BT_BUF_INIT(maxbytes)                                                                      \
    {                                                                                              \
        NULL, 0, 0, (maxbytes)                                                                     \
    }

/* Append n bytes; BT_ETOOBIG (buffer unchanged) past the cap. */
enum bt_err bt_buf_append(bt_buf *b, const void *data, size_t n);
enum bt_err bt_buf_puts(bt_buf *b, const char *s);
enum bt_err bt_buf_printf(bt_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hand the contents to the caller (NUL-terminated, never NULL) and reset. */
char *bt_buf_steal(bt_buf *b);
void bt_buf_free(bt_buf *b);

/* Clocks in milliseconds: monotonic for deadlines, wall for records. */
int64_t bt_mono_ms(void);
/* Monotonic microseconds, for timing stages. */
int64_t bt_mono_us(void);
int64_t bt_wall_ms(void);
/* ISO 8601 UTC time ("2026-11-23T16:48:06.123Z") into out (>= 25 bytes). */
void bt_iso8601(int64_t wall_ms, char *out, size_t outlen);

/* SHA-256 of data as 64 lowercase hex digits plus NUL. */
void bt_sha256_hex(const void *data, size_t n, char out[65]);

/* Canonical JSON (sorted keys, compact, UTF-8): the form plans are hashed in.
 * Returns a new heap string, or NULL if the value cannot be encoded. */
char *bt_json_canonical(const json_t *value);

/* True if s[0..n) is valid UTF-8 (no overlongs, no surrogates). */
bool bt_utf8_valid(const char *s, size_t n);

/* Parse a whole decimal integer in [min, max]; false on any junk. */
bool bt_parse_long(const char *s, long min, long max, long *out);

/* 128 random bits as 32 lowercase hex digits plus NUL (for ids). */
void bt_random_id(char out[33]);

/* ASCII lowercase copy (new heap string). */
char *bt_lower(const char *s);

/* Read a whole file (at most max bytes) into a new NUL-terminated buffer. */
enum bt_err bt_read_file(const char *path, size_t max, char **out, size_t *outlen, char *err,
                         size_t errlen);

#endif
