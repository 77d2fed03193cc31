/* util.c - see util.h. */
#include "bot/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

const char *bt_strerror(enum bt_err err)
{
    switch (err) {
    case BT_OK:
        return "ok";
    case BT_ENOMEM:
        return "out of memory";
    case BT_EINVAL:
        return "invalid input";
    case BT_ENOENT:
        return "not found";
    case BT_EIO:
        return "input/output error";
    case BT_EPARSE:
        return "malformed input";
    case BT_ESTORE:
        return "store error";
    case BT_EDENIED:
        return "refused";
    case BT_ETIMEOUT:
        return "timed out";
    case BT_ETOOBIG:
        return "too large";
    case BT_ECONNECTOR:
        return "connector error";
    case BT_EVERSION:
        return "unsupported version";
    case BT_ECORRUPT:
        return "data is corrupt";
    case BT_EUNAVAIL:
        return "service unavailable";
    case BT_ECONFIG:
        return "invalid configuration";
    }
    return "unknown error";
}

static void oom(size_t n)
{
    fprintf(stderr, "baton: out of memory allocating %zu bytes\n", n);
    abort();
}

void *bt_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *bt_calloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        oom(count * size);
    return p;
}

void *bt_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *bt_strdup(const char *s)
{
    return bt_strndup(s, strlen(s));
}

char *bt_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = bt_malloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

char *bt_asprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return bt_strdup("");
    char *p = bt_malloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

bool bt_fmt(char *dst, size_t dstlen, const char *fmt, ...)
{
    if (dstlen == 0)
        return false;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(dst, dstlen, fmt, ap);
    va_end(ap);
    if (n < 0) {
        dst[0] = '\0';
        return false;
    }
    return (size_t)n < dstlen;
}

bool bt_strlcpy(char *dst, const char *src, size_t dstlen)
{
    if (dstlen == 0)
        return false;
    size_t n = strnlen(src, dstlen);
    if (n == dstlen) {
        memcpy(dst, src, dstlen - 1);
        dst[dstlen - 1] = '\0';
        return false;
    }
    memcpy(dst, src, n + 1);
    return true;
}

#define BT_BUF_DEFAULT_MAX (16u * 1024u * 1024u)

enum bt_err bt_buf_append(bt_buf *b, const void *data, size_t n)
{
    size_t max = b->max ? b->max : BT_BUF_DEFAULT_MAX;
    if (n > max || b->len > max - n)
        return BT_ETOOBIG;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->data = bt_realloc(b->data, cap);
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
    return BT_OK;
}

enum bt_err bt_buf_puts(bt_buf *b, const char *s)
{
    return bt_buf_append(b, s, strlen(s));
}

enum bt_err bt_buf_printf(bt_buf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return BT_EINVAL;
    if ((size_t)n < sizeof small)
        return bt_buf_append(b, small, (size_t)n);
    char *big = bt_malloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    enum bt_err e = bt_buf_append(b, big, (size_t)n);
    free(big);
    return e;
}

char *bt_buf_steal(bt_buf *b)
{
    char *p = b->data ? b->data : bt_strdup("");
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

void bt_buf_free(bt_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int64_t bt_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t bt_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t bt_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void bt_iso8601(int64_t wall_ms, char *out, size_t outlen)
{
    time_t secs = (time_t)(wall_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char base[32];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    bt_fmt(out, outlen, "%s.%03dZ", base, (int)(wall_ms % 1000));
}

void bt_sha256_hex(const void *data, size_t n, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(data, n, md, &mdlen, EVP_sha256(), NULL);
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[64] = '\0';
}

char *bt_json_canonical(const json_t *value)
{
    if (!value)
        return NULL;
    return json_dumps(value, JSON_SORT_KEYS | JSON_COMPACT | JSON_ENCODE_ANY);
}

bool bt_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + len > n)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

bool bt_parse_long(const char *s, long min, long max, long *out)
{
    if (!s || !*s)
        return false;
    errno = 0;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (errno || !end || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

char *bt_lower(const char *s)
{
    char *p = bt_strdup(s);
    for (char *q = p; *q; q++)
        if (*q >= 'A' && *q <= 'Z')
            *q = (char)(*q - 'A' + 'a');
    return p;
}

enum bt_err bt_read_file(const char *path, size_t max, char **out, size_t *outlen, char *err,
                         size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        bt_fmt(err, errlen, "%s: %s", path, strerror(errno));
        return errno == ENOENT ? BT_ENOENT : BT_EIO;
    }
    bt_buf b = BT_BUF_INIT(max);
    char chunk[8192];
    enum bt_err e = BT_OK;
    for (;;) {
        size_t n = fread(chunk, 1, sizeof chunk, f);
        if (n && (e = bt_buf_append(&b, chunk, n)) != BT_OK) {
            bt_fmt(err, errlen, "%s: larger than %zu bytes", path, max);
            break;
        }
        if (n < sizeof chunk) {
            if (ferror(f)) {
                bt_fmt(err, errlen, "%s: read error", path);
                e = BT_EIO;
            }
            break;
        }
    }
    fclose(f);
    if (e != BT_OK) {
        bt_buf_free(&b);
        return e;
    }
    if (outlen)
        *outlen = b.len;
    *out = bt_buf_steal(&b);
    return BT_OK;
}

void bt_random_id(char out[33])
{
    unsigned char raw[16];
    if (RAND_bytes(raw, sizeof raw) != 1) {
        fprintf(stderr, "baton: no randomness available\n");
        abort();
    }
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < 16; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[32] = '\0';
}
