/*
 * http.c - the libcurl client behind the http and netbox connector types
 * (see "HTTP services" in connectors_int.h and docs/connectors.md).
 *
 * Each request is made with a blocking easy handle on the calling thread.
 * Handles are kept in a small pool under the client's mutex: an easy handle
 * keeps its connections alive between transfers (curl_easy_reset leaves the
 * connection cache alone), so a handle given back and taken again by any
 * thread reuses the service's connection. No handle is ever used by two
 * threads at once.
 *
 * What keeps a slow or hostile service from hurting baton:
 *   - connect and total timeouts on every attempt, and an optional deadline
 *     over the whole call (retries and waits included);
 *   - bodies capped at max_body_bytes by the write callback, which aborts
 *     the transfer rather than reading on; a Content-Type other than JSON is
 *     refused before its body is read; JSON nesting is bounded before
 *     jansson sees it;
 *   - only http and https, no redirects, TLS verified unless configured off;
 *   - the bulkhead: at most max_concurrent requests in flight per connector,
 *     later callers wait at most queue_wait_ms for a slot.
 *
 * Retries: only transient outcomes (no connection, timeout, 502/503/504,
 * 429, a connection that broke mid-answer) are retried, with exponential
 * backoff and full jitter capped at retry_cap_ms, or after the Retry-After
 * the service asked for. A request that is not idempotent is retried only
 * when it never left: CURLOPT_PREREQFUNCTION tells whether curl got as far as
 * sending it. Such requests also use a fresh connection, because curl
 * silently resends a request whose reused connection turns out to be dead,
 * and a plan must never be sent twice.
 *
 * Secrets: the token is read from the environment once, when the client is
 * built, and lives only in this struct and the Authorization header of a
 * request in flight. No message and no log line contains it.
 */
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "bot/log.h"
#include "connectors/connectors_int.h"

#define HTTP_MIB (1024LL * 1024)
#define HTTP_JSON_DEPTH_MAX 64
#define HTTP_ERROR_BODY_MAX 16384 /* kept of a non-2xx answer, for its detail */
#define HTTP_DETAIL_MAX 200       /* characters of a service's error detail quoted */
#define HTTP_TOKEN_MAX 4096

struct bt_connectors__http {
    char *name;      /* the connector's name */
    char *label;     /* "asset service 'assets' (host:port)" */
    char *host_port; /* "host:port" */
    char *base_url;  /* without a trailing '/' */
    char *scheme, *host;
    long port;
    char *token;     /* NULL when no token_env; never printed */
    char *token_env; /* the variable's name, for messages */
    char *ca_file;
    enum bt_connectors__http_auth auth;
    bool verify_tls;
    long long connect_timeout_ms, timeout_ms, max_body_bytes, max_concurrent, queue_wait_ms,
        retries, retry_base_ms, retry_cap_ms;

    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t cv;  /* a bulkhead slot was freed */
    long long in_flight;
    CURL **idle;
    size_t nidle;
    uint64_t rng;
};

/* ---- libcurl, once per process --------------------------------------------- */

static pthread_once_t http_once = PTHREAD_ONCE_INIT;
static CURLcode http_init_rc;

static void http_global_init(void)
{
    /* curl_global_init is not thread-safe in 7.88 and must run before any
     * other call; pthread_once gives both. It is never undone: handles may be
     * in use on other threads until the process exits. */
    http_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- configuration ------------------------------------------------------------ */

struct http_int_key {
    const char *key;
    long long min, max, dflt;
    size_t offset;
};

/* The numeric keys every HTTP connector takes, with their bounds and
 * defaults (docs/connectors.md lists the same). */
static const struct http_int_key http_int_keys[] = {
    {"connect_timeout_ms", 10, 600000, 2000,
     offsetof(struct bt_connectors__http, connect_timeout_ms)},
    {"timeout_ms", 100, 3600000, 10000, offsetof(struct bt_connectors__http, timeout_ms)},
    {"max_body_bytes", 1024, 256 * HTTP_MIB, 8 * HTTP_MIB,
     offsetof(struct bt_connectors__http, max_body_bytes)},
    {"max_concurrent", 1, 256, 8, offsetof(struct bt_connectors__http, max_concurrent)},
    {"queue_wait_ms", 0, 600000, 2000, offsetof(struct bt_connectors__http, queue_wait_ms)},
    {"retries", 0, 10, 2, offsetof(struct bt_connectors__http, retries)},
    {"retry_base_ms", 1, 60000, 200, offsetof(struct bt_connectors__http, retry_base_ms)},
    {"retry_cap_ms", 1, 600000, 5000, offsetof(struct bt_connectors__http, retry_cap_ms)},
};
#define HTTP_NINT (sizeof http_int_keys / sizeof http_int_keys[0])

static const char *const http_other_keys[] = {"type",       "base_url", "token_env",
                                              "verify_tls", "ca_file",  NULL};

static bool key_known(const char *key, const char *const *extra)
{
    for (size_t i = 0; http_other_keys[i]; i++)
        if (strcmp(http_other_keys[i], key) == 0)
            return true;
    for (size_t i = 0; i < HTTP_NINT; i++)
        if (strcmp(http_int_keys[i].key, key) == 0)
            return true;
    for (size_t i = 0; extra && extra[i]; i++)
        if (strcmp(extra[i], key) == 0)
            return true;
    return false;
}

static bool env_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128 || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return false;
    }
    return true;
}

static char *url_part(CURLU *u, CURLUPart part, unsigned flags)
{
    char *v = NULL;
    if (curl_url_get(u, part, &v, flags) != CURLUE_OK || !v)
        return NULL;
    char *copy = bt_strdup(v);
    curl_free(v);
    return copy;
}

/* Split base_url; a message for the user when it is not usable. */
static bool parse_base(struct bt_connectors__http *h, const char *url, char *why, size_t whylen)
{
    if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0) {
        bt_fmt(why, whylen, "must start with http:// or https://");
        return false;
    }
    for (const char *p = url; *p; p++) {
        if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
            bt_fmt(why, whylen, "must not contain spaces or control characters");
            return false;
        }
    }
    CURLU *u = curl_url();
    bool ok = false;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK) {
        bt_fmt(why, whylen, "is not a valid URL");
    } else {
        char *user = url_part(u, CURLUPART_USER, 0);
        char *query = url_part(u, CURLUPART_QUERY, 0);
        char *fragment = url_part(u, CURLUPART_FRAGMENT, 0);
        char *port = url_part(u, CURLUPART_PORT, CURLU_DEFAULT_PORT);
        h->scheme = url_part(u, CURLUPART_SCHEME, 0);
        h->host = url_part(u, CURLUPART_HOST, 0);
        long portn = 0;
        if (user) {
            bt_fmt(why, whylen,
                   "must not contain a user name or password (credentials come from the "
                   "environment: token_env)");
        } else if (query || fragment) {
            bt_fmt(why, whylen, "must not have a query or fragment");
        } else if (!h->scheme || !h->host || !*h->host || !port ||
                   !bt_parse_long(port, 1, 65535, &portn)) {
            bt_fmt(why, whylen, "needs a host (and a valid port, if one is given)");
        } else {
            h->port = portn;
            ok = true;
        }
        free(user);
        free(query);
        free(fragment);
        free(port);
    }
    curl_url_cleanup(u);
    if (ok) {
        size_t n = strlen(url);
        while (n > 0 && url[n - 1] == '/')
            n--;
        h->base_url = bt_strndup(url, n);
        h->host_port = bt_asprintf("%s:%ld", h->host, h->port);
    }
    return ok;
}

void bt_connectors__http_free(struct bt_connectors__http *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->nidle; i++)
        curl_easy_cleanup(h->idle[i]);
    free(h->idle);
    if (h->token) {
        /* Not left behind in freed memory for a later bug to print. */
        explicit_bzero(h->token, strlen(h->token));
        free(h->token);
    }
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
    free(h->token_env);
    free(h->ca_file);
    free(h->scheme);
    free(h->host);
    free(h->base_url);
    free(h->host_port);
    free(h->label);
    free(h->name);
    free(h);
}

struct bt_connectors__http *bt_connectors__http_new(const struct bt_connectors__where *w,
                                                    const char *name, const char *service,
                                                    enum bt_connectors__http_auth auth,
                                                    bool token_required, const char *const *extra,
                                                    bt_diag *d)
{
    pthread_once(&http_once, http_global_init);
    bool ok = true;
    if (http_init_rc != CURLE_OK) {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, NULL, "libcurl cannot start: %s",
                            curl_easy_strerror(http_init_rc));
        return NULL;
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)w->conf, key, v)
    {
        if (!key_known(key, extra)) {
            bt_buf known = BT_BUF_INIT(2048);
            for (size_t i = 0; http_other_keys[i]; i++)
                bt_buf_printf(&known, "%s%s", i ? ", " : "", http_other_keys[i]);
            for (size_t i = 0; i < HTTP_NINT; i++)
                bt_buf_printf(&known, ", %s", http_int_keys[i].key);
            for (size_t i = 0; extra && extra[i]; i++)
                bt_buf_printf(&known, ", %s", extra[i]);
            bt_connectors__diag(d, w->doc, w->conf, w->prefix, key, "unknown key (known: %s)",
                                known.data);
            bt_buf_free(&known);
            ok = false;
        }
    }

    struct bt_connectors__http *h = bt_calloc(1, sizeof *h);
    pthread_mutex_init(&h->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->cv, &ca);
    pthread_condattr_destroy(&ca);
    h->name = bt_strdup(name);
    h->auth = auth;
    h->verify_tls = true;
    h->rng = (uint64_t)bt_mono_us() ^ ((uint64_t)(uintptr_t)h << 16) ^ 0x9e3779b97f4a7c15ULL;

    for (size_t i = 0; i < HTTP_NINT; i++) {
        const struct http_int_key *k = &http_int_keys[i];
        long long *field = (long long *)((char *)h + k->offset);
        *field = k->dflt;
        json_t *iv = json_object_get(w->conf, k->key);
        if (!iv)
            continue;
        if (!json_is_integer(iv) || json_integer_value(iv) < k->min ||
            json_integer_value(iv) > k->max) {
            bt_connectors__diag(d, w->doc, w->conf, w->prefix, k->key,
                                "must be an integer between %lld and %lld", k->min, k->max);
            ok = false;
            continue;
        }
        *field = json_integer_value(iv);
    }
    if (h->retry_cap_ms < h->retry_base_ms) {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, "retry_cap_ms",
                            "must not be below retry_base_ms (%lld)", h->retry_base_ms);
        ok = false;
    }
    if (h->connect_timeout_ms > h->timeout_ms) {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, "connect_timeout_ms",
                            "must not be above timeout_ms (%lld)", h->timeout_ms);
        ok = false;
    }

    json_t *base = json_object_get(w->conf, "base_url");
    char why[256];
    if (!json_is_string(base)) {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, "base_url",
                            base ? "must be a string like https://service.example:8443/api"
                                 : "required, missing (like https://service.example:8443/api)");
        ok = false;
    } else if (!parse_base(h, json_string_value(base), why, sizeof why)) {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, "base_url", "%s", why);
        ok = false;
    }
    h->label = bt_asprintf("%s '%s' (%s)", service, name, h->host_port ? h->host_port : "?");

    json_t *tls = json_object_get(w->conf, "verify_tls");
    if (tls && !json_is_boolean(tls)) {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, "verify_tls", "must be true or false");
        ok = false;
    } else if (tls) {
        h->verify_tls = json_is_true(tls);
    }
    json_t *cafile = json_object_get(w->conf, "ca_file");
    if (cafile) {
        const char *p = json_string_value(cafile);
        if (!p || p[0] != '/') {
            bt_connectors__diag(d, w->doc, w->conf, w->prefix, "ca_file",
                                "must be an absolute path to a PEM file of CA certificates");
            ok = false;
        } else if (access(p, R_OK) != 0) {
            char ebuf[128];
            bt_connectors__diag(d, w->doc, w->conf, w->prefix, "ca_file", "cannot be read: %s",
                                strerror_r(errno, ebuf, sizeof ebuf));
            ok = false;
        } else {
            h->ca_file = bt_strdup(p);
        }
    }

    json_t *tenv = json_object_get(w->conf, "token_env");
    if (tenv && (!json_is_string(tenv) || !env_name_ok(json_string_value(tenv)))) {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, "token_env",
                            "must be the name of an environment variable, like NETBOX_TOKEN");
        ok = false;
    } else if (!tenv && token_required) {
        bt_connectors__diag(d, w->doc, w->conf, w->prefix, "token_env",
                            "required, missing (the name of the environment variable that holds "
                            "the API token; tokens never go in baton.yaml)");
        ok = false;
    } else if (tenv) {
        const char *var = json_string_value(tenv);
        h->token_env = bt_strdup(var);
        const char *secret = getenv(var);
        /* The message names the variable, never what it holds. */
        if (!secret || !*secret) {
            bt_connectors__diag(d, w->doc, w->conf, w->prefix, "token_env",
                                "environment variable %s is not set or empty (it must hold the "
                                "API token)",
                                var);
            ok = false;
        } else {
            bool printable = strlen(secret) <= HTTP_TOKEN_MAX;
            for (const char *p = secret; printable && *p; p++)
                printable = (unsigned char)*p > 0x20 && *p != 0x7f;
            if (!printable) {
                bt_connectors__diag(d, w->doc, w->conf, w->prefix, "token_env",
                                    "environment variable %s must hold a token of up to %d "
                                    "printable characters without spaces",
                                    var, HTTP_TOKEN_MAX);
                ok = false;
            } else {
                h->token = bt_strdup(secret);
            }
        }
    }
    if (!ok) {
        bt_connectors__http_free(h);
        return NULL;
    }
    h->idle = bt_calloc((size_t)h->max_concurrent, sizeof(CURL *));
    return h;
}

const char *bt_connectors__http_label(const struct bt_connectors__http *h)
{
    return h->label;
}

bool bt_connectors__http_same_origin(const struct bt_connectors__http *h, const char *url)
{
    if (!url || (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0))
        return false;
    CURLU *u = curl_url();
    bool same = false;
    if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK) {
        char *scheme = url_part(u, CURLUPART_SCHEME, 0);
        char *host = url_part(u, CURLUPART_HOST, 0);
        char *user = url_part(u, CURLUPART_USER, 0);
        char *port = url_part(u, CURLUPART_PORT, CURLU_DEFAULT_PORT);
        long portn = 0;
        same = scheme && host && port && !user && strcasecmp(scheme, h->scheme) == 0 &&
               strcasecmp(host, h->host) == 0 && bt_parse_long(port, 1, 65535, &portn) &&
               portn == h->port;
        free(scheme);
        free(host);
        free(user);
        free(port);
    }
    curl_url_cleanup(u);
    return same;
}

void bt_connectors__http_query_escape(bt_buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            bt_buf_append(b, p, 1);
        } else {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            bt_buf_append(b, e, 3);
        }
    }
}

/* ---- the handle pool and the bulkhead ----------------------------------------- */

static CURL *handle_take(struct bt_connectors__http *h)
{
    CURL *c = NULL;
    pthread_mutex_lock(&h->mu);
    if (h->nidle)
        c = h->idle[--h->nidle];
    pthread_mutex_unlock(&h->mu);
    return c ? c : curl_easy_init();
}

static void handle_give(struct bt_connectors__http *h, CURL *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&h->mu);
    if (h->nidle < (size_t)h->max_concurrent) {
        h->idle[h->nidle++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&h->mu);
    if (c)
        curl_easy_cleanup(c);
}

static void abs_deadline(int64_t ms_from_now, struct timespec *ts)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(ms_from_now / 1000);
    ts->tv_nsec += (long)(ms_from_now % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Take a slot of the bulkhead, waiting at most queue_wait_ms (and never past
 * the call's deadline). BT_EUNAVAIL with the reason when none came free. */
static enum bt_err slot_take(struct bt_connectors__http *h, int64_t call_deadline, char *err,
                             size_t errlen)
{
    int64_t start = bt_mono_ms();
    int64_t until = start + h->queue_wait_ms;
    if (call_deadline && call_deadline < until)
        until = call_deadline;
    pthread_mutex_lock(&h->mu);
    while (h->in_flight >= h->max_concurrent) {
        int64_t left = until - bt_mono_ms();
        if (left <= 0)
            break;
        struct timespec ts;
        abs_deadline(left, &ts);
        pthread_cond_timedwait(&h->cv, &h->mu, &ts);
    }
    bool got = h->in_flight < h->max_concurrent;
    long long busy = h->in_flight;
    if (got)
        h->in_flight++;
    pthread_mutex_unlock(&h->mu);
    if (got)
        return BT_OK;
    bt_fmt(err, errlen,
           "connector '%s' (%s) is busy: %lld call%s in flight (max_concurrent %lld); waited %lld "
           "ms for a free slot",
           h->name, h->host_port, busy, busy == 1 ? "" : "s", h->max_concurrent,
           (long long)(bt_mono_ms() - start));
    return BT_EUNAVAIL;
}

static void slot_give(struct bt_connectors__http *h)
{
    pthread_mutex_lock(&h->mu);
    h->in_flight--;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* Full jitter: uniform in [0, min(cap, base * 2^(retry-1))]. */
static int64_t backoff_ms(struct bt_connectors__http *h, int retry)
{
    int64_t cap = h->retry_base_ms;
    for (int i = 1; i < retry && cap < h->retry_cap_ms; i++)
        cap *= 2;
    if (cap > h->retry_cap_ms)
        cap = h->retry_cap_ms;
    pthread_mutex_lock(&h->mu);
    /* xorshift64*: statistical quality is all jitter needs. */
    h->rng ^= h->rng >> 12;
    h->rng ^= h->rng << 25;
    h->rng ^= h->rng >> 27;
    uint64_t r = h->rng * 0x2545F4914F6CDD1DULL;
    pthread_mutex_unlock(&h->mu);
    return (int64_t)(r % (uint64_t)(cap + 1));
}

static void sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- one attempt ------------------------------------------------------------------ */

enum outcome_kind {
    O_OK,
    O_NOT_FOUND,
    O_PERMANENT,
    O_CONNECT,         /* no connection: the request never left */
    O_CONNECT_TIMEOUT, /* ditto, out of time */
    O_TIMEOUT,         /* sent (or maybe sent), no answer in time */
    O_STATUS,          /* 429, 502, 503, 504 */
    O_BROKEN,          /* the connection broke before the answer was complete */
};

struct attempt {
    struct bt_connectors__http *h;
    CURL *curl;
    bt_buf body;
    bool checked;    /* status and Content-Type looked at (first body bytes) */
    bool ok_status;  /* 2xx */
    bool too_big;    /* a 2xx body passed max_body_bytes */
    bool wrong_type; /* a 2xx body that is not JSON */
    bool cut;        /* an error body was cut at HTTP_ERROR_BODY_MAX */
    bool sent;       /* curl got as far as sending the request */
    char ctype[96];

    enum outcome_kind kind;
    long status;
    int64_t retry_after_ms;
    json_t *json;
    char msg[400]; /* what happened, without the service's label */
};

static bool json_ctype(const char *ct)
{
    if (!ct)
        return false;
    size_t n = strcspn(ct, ";");
    while (n > 0 && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    if (n == 16 && strncasecmp(ct, "application/json", 16) == 0)
        return true;
    /* application/problem+json and other +json types */
    return n > 17 && strncasecmp(ct, "application/", 12) == 0 &&
           strncasecmp(ct + n - 5, "+json", 5) == 0;
}

/* Copy text from a service into a message: printable ASCII only, capped. */
static void shown(const char *s, size_t n, char *out, size_t outlen, size_t max)
{
    size_t o = 0;
    for (size_t i = 0; i < n && s[i] && o + 1 < outlen && o < max; i++)
        out[o++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    out[o] = '\0';
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    struct attempt *a = ud;
    size_t n = size * nmemb;
    if (!a->checked) {
        a->checked = true;
        long status = 0;
        const char *ct = NULL;
        curl_easy_getinfo(a->curl, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_getinfo(a->curl, CURLINFO_CONTENT_TYPE, &ct);
        a->ok_status = status >= 200 && status < 300;
        shown(ct ? ct : "", ct ? strlen(ct) : 0, a->ctype, sizeof a->ctype, 64);
        if (a->ok_status && !json_ctype(ct)) {
            /* Refused before its body is read: an HTML error page from a
             * proxy is not an answer, however long it is. */
            a->wrong_type = true;
            return 0;
        }
    }
    size_t max = a->ok_status ? (size_t)a->h->max_body_bytes : HTTP_ERROR_BODY_MAX;
    if (a->body.len + n > max) {
        if (a->ok_status)
            a->too_big = true;
        else
            a->cut = true;
        return 0; /* aborts the transfer: nothing more is read */
    }
    if (bt_buf_append(&a->body, p, n) != BT_OK) {
        a->too_big = true;
        return 0;
    }
    return n;
}

static int on_prereq(void *ud, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
    (void)primary_ip;
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    ((struct attempt *)ud)->sent = true;
    return CURL_PREREQFUNC_OK;
}

/* Deeper than max levels of [ and { (outside strings)? Checked before
 * parsing so a hostile body cannot make jansson recurse deeply. */
static bool too_deep(const char *s, size_t n, int max)
{
    int depth = 0;
    bool in_str = false, esc = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max)
                return true;
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return false;
}

static const char *reason(long status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    }
    return "";
}

/* The detail an error answer gives, if it is JSON with a usual field. */
static void error_detail(const json_t *body, char *out, size_t outlen)
{
    out[0] = '\0';
    static const char *const keys[] = {"detail", "error_message", "error", "message", NULL};
    for (size_t i = 0; json_is_object(body) && keys[i]; i++) {
        json_t *v = json_object_get(body, keys[i]);
        if (json_is_object(v)) /* {"error": {"message": ...}} */
            v = json_object_get(v, "message");
        if (json_is_string(v) && json_string_length(v)) {
            shown(json_string_value(v), json_string_length(v), out, outlen, HTTP_DETAIL_MAX);
            return;
        }
    }
}

static void parse_json(struct attempt *a, bool for_error)
{
    if (a->body.len == 0) {
        if (!for_error)
            bt_fmt(a->msg, sizeof a->msg, "sent an empty answer where JSON was expected");
        return;
    }
    if (too_deep(a->body.data, a->body.len, HTTP_JSON_DEPTH_MAX)) {
        if (!for_error)
            bt_fmt(a->msg, sizeof a->msg, "sent JSON nested deeper than %d levels; refused",
                   HTTP_JSON_DEPTH_MAX);
        return;
    }
    json_error_t je;
    a->json = json_loadb(a->body.data, a->body.len, JSON_REJECT_DUPLICATES, &je);
    if (!a->json && !for_error) {
        char text[120];
        shown(je.text, strlen(je.text), text, sizeof text, 100);
        bt_fmt(a->msg, sizeof a->msg, "sent malformed JSON: %s (line %d, column %d)", text, je.line,
               je.column);
    }
}

/* What a final HTTP status means. */
static void judge_status(struct attempt *a)
{
    long s = a->status;
    if (s >= 200 && s < 300) {
        /* A body that was not JSON was refused by on_body already; an
         * empty one is reported by parse_json. */
        parse_json(a, false);
        a->kind = a->json ? O_OK : O_PERMANENT;
        return;
    }
    if (json_ctype(a->ctype))
        parse_json(a, true);
    char detail[HTTP_DETAIL_MAX + 8];
    error_detail(a->json, detail, sizeof detail);
    const char *sep = detail[0] ? ": " : "";
    if (s == 429 || s == 503) {
        curl_off_t ra = 0;
        if (curl_easy_getinfo(a->curl, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra > 0)
            a->retry_after_ms = (int64_t)(ra > 86400 ? 86400 : ra) * 1000;
        a->kind = O_STATUS;
        bt_fmt(a->msg, sizeof a->msg, "%s: %ld %s%s%s",
               s == 429 ? "is rate limiting" : "is unavailable", s, reason(s), sep, detail);
    } else if (s == 502 || s == 504) {
        a->kind = O_STATUS;
        bt_fmt(a->msg, sizeof a->msg, "%s: %ld %s%s%s",
               s == 502 ? "is unavailable behind its gateway" : "timed out behind its gateway", s,
               reason(s), sep, detail);
    } else if (s == 404) {
        a->kind = O_NOT_FOUND;
        bt_fmt(a->msg, sizeof a->msg, "answered 404 Not Found%s%s", sep, detail);
    } else if (s >= 300 && s < 400) {
        a->kind = O_PERMANENT;
        bt_fmt(a->msg, sizeof a->msg,
               "answered %ld with a redirect; redirects are not followed (check base_url)", s);
    } else if (s == 401 || s == 403) {
        a->kind = O_PERMANENT;
        char hint[200];
        if (a->h->token_env)
            bt_fmt(hint, sizeof hint, "check the token in environment variable %s",
                   a->h->token_env);
        else
            bt_fmt(hint, sizeof hint, "no token is configured: set token_env");
        bt_fmt(a->msg, sizeof a->msg, "refused the credentials: %ld %s%s%s (%s)", s, reason(s), sep,
               detail, hint);
    } else if (s >= 400 && s < 500) {
        a->kind = O_PERMANENT;
        bt_fmt(a->msg, sizeof a->msg, "rejected the request: %ld %s%s%s", s, reason(s), sep,
               detail);
    } else {
        a->kind = O_PERMANENT;
        bt_fmt(a->msg, sizeof a->msg, "failed: %ld%s%s%s%s", s, reason(s)[0] ? " " : "", reason(s),
               sep, detail);
    }
}

static void judge_curl(struct attempt *a, CURLcode rc, const char *errbuf, long timeout_ms)
{
    long oserr = 0;
    curl_easy_getinfo(a->curl, CURLINFO_OS_ERRNO, &oserr);
    char ebuf[CURL_ERROR_SIZE + 8];
    shown(errbuf[0] ? errbuf : curl_easy_strerror(rc), CURL_ERROR_SIZE, ebuf, sizeof ebuf, 160);
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
        a->kind = O_CONNECT;
        a->sent = false;
        bt_fmt(a->msg, sizeof a->msg, "could not be reached: its host name does not resolve");
        return;
    case CURLE_COULDNT_CONNECT:
        a->kind = O_CONNECT;
        a->sent = false;
        if (oserr == ECONNREFUSED)
            bt_fmt(a->msg, sizeof a->msg, "refused the connection (is it running?)");
        else if (oserr == EHOSTUNREACH || oserr == ENETUNREACH)
            bt_fmt(a->msg, sizeof a->msg, "could not be reached: no route to it");
        else
            bt_fmt(a->msg, sizeof a->msg, "could not be reached: %s", ebuf);
        return;
    case CURLE_OPERATION_TIMEDOUT:
        if (!a->sent) {
            a->kind = O_CONNECT_TIMEOUT;
            bt_fmt(a->msg, sizeof a->msg, "did not accept a connection within %lld ms",
                   a->h->connect_timeout_ms < timeout_ms ? a->h->connect_timeout_ms
                                                         : (long long)timeout_ms);
        } else {
            a->kind = O_TIMEOUT;
            bt_fmt(a->msg, sizeof a->msg, "did not answer within %ld ms", timeout_ms);
        }
        return;
    case CURLE_WRITE_ERROR:
        if (a->too_big) {
            a->kind = O_PERMANENT;
            bt_fmt(a->msg, sizeof a->msg,
                   "sent a response larger than %lld bytes (max_body_bytes); refused",
                   a->h->max_body_bytes);
            return;
        }
        if (a->wrong_type) {
            a->kind = O_PERMANENT;
            bt_fmt(a->msg, sizeof a->msg, "answered with Content-Type '%s', not application/json",
                   a->ctype[0] ? a->ctype : "(none)");
            return;
        }
        if (a->cut) { /* an error answer, judged by its status */
            curl_easy_getinfo(a->curl, CURLINFO_RESPONSE_CODE, &a->status);
            judge_status(a);
            return;
        }
        break;
    case CURLE_FILESIZE_EXCEEDED:
        curl_easy_getinfo(a->curl, CURLINFO_RESPONSE_CODE, &a->status);
        if (a->status < 200 || a->status >= 300) {
            judge_status(a);
            return;
        }
        a->kind = O_PERMANENT;
        bt_fmt(a->msg, sizeof a->msg,
               "sent a response larger than %lld bytes (max_body_bytes); refused",
               a->h->max_body_bytes);
        return;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        a->kind = O_BROKEN;
        bt_fmt(a->msg, sizeof a->msg, "closed the connection before its answer was complete");
        return;
    case CURLE_PEER_FAILED_VERIFICATION:
        a->kind = O_PERMANENT;
        bt_fmt(a->msg, sizeof a->msg, "failed TLS verification: %s (see verify_tls and ca_file)",
               ebuf);
        return;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
        a->kind = O_PERMANENT;
        bt_fmt(a->msg, sizeof a->msg, "could not set up TLS: %s (see verify_tls and ca_file)",
               ebuf);
        return;
    default:
        break;
    }
    a->kind = O_PERMANENT;
    bt_fmt(a->msg, sizeof a->msg, "request failed: %s", ebuf);
}

static struct curl_slist *headers_for(const struct bt_connectors__http *h, bool has_body)
{
    struct curl_slist *l = NULL;
    l = curl_slist_append(l, "Accept: application/json");
    /* No 100-continue round trip before a JSON body. */
    l = curl_slist_append(l, "Expect:");
    if (has_body)
        l = curl_slist_append(l, "Content-Type: application/json");
    if (h->token) {
        char *line =
            bt_asprintf("Authorization: %s %s",
                        h->auth == BT_CONNECTORS__HTTP_TOKEN ? "Token" : "Bearer", h->token);
        l = curl_slist_append(l, line);
        explicit_bzero(line, strlen(line));
        free(line);
    }
    return l;
}

static void attempt_once(struct attempt *a, const char *method, const char *url, const char *body,
                         long timeout_ms, bool fresh)
{
    struct bt_connectors__http *h = a->h;
    CURL *c = a->curl;
    char errbuf[CURL_ERROR_SIZE];
    errbuf[0] = '\0';
    curl_easy_reset(c);
    struct curl_slist *hdrs = headers_for(h, body != NULL);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    long ct = (long)h->connect_timeout_ms < timeout_ms ? (long)h->connect_timeout_ms : timeout_ms;
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, ct);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, h->verify_tls ? 1L : 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, h->verify_tls ? 2L : 0L);
    if (h->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, h->ca_file);
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)h->max_body_bytes);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, a);
    curl_easy_setopt(c, CURLOPT_PREREQFUNCTION, on_prereq);
    curl_easy_setopt(c, CURLOPT_PREREQDATA, a);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "baton/0.1");
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    if (fresh)
        curl_easy_setopt(c, CURLOPT_FRESH_CONNECT, 1L);
    if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? strlen(body) : 0));
    } else {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &a->status);
        judge_status(a);
    } else {
        judge_curl(a, rc, errbuf, timeout_ms);
    }
    /* Options point at stack memory and the header list: clear them before
     * the handle goes back to the pool. */
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(hdrs);
}

/* ---- a call ------------------------------------------------------------------------ */

static char *full_url(const struct bt_connectors__http *h, const char *target)
{
    if (strncasecmp(target, "http://", 7) == 0 || strncasecmp(target, "https://", 8) == 0)
        return bt_connectors__http_same_origin(h, target) ? bt_strdup(target) : NULL;
    return bt_asprintf("%s%s%s", h->base_url, target[0] == '/' ? "" : "/", target);
}

void bt_connectors__http_reply_free(struct bt_connectors__http_reply *reply)
{
    if (!reply)
        return;
    json_decref(reply->body);
    reply->body = NULL;
}

/* The bt_err for a transient outcome that is final. */
static enum bt_err transient_code(enum outcome_kind k, long status, bool unknown_outcome)
{
    if (k == O_TIMEOUT || (k == O_STATUS && status == 504))
        return BT_ETIMEOUT;
    /* A request that changes something, may have arrived and got no usable
     * answer: reported like a timeout, whose outcome is just as unknown, so
     * that nothing above retries it unless it only reads. 429 and 503 say
     * the service did not take it. */
    if (unknown_outcome && (k == O_BROKEN || (k == O_STATUS && status == 502)))
        return BT_ETIMEOUT;
    return BT_EUNAVAIL;
}

enum bt_err bt_connectors__http_request(struct bt_connectors__http *h,
                                        const struct bt_connectors__http_call *call,
                                        struct bt_connectors__http_reply *reply, char *err,
                                        size_t errlen)
{
    memset(reply, 0, sizeof *reply);
    char *url = full_url(h, call->target);
    if (!url) {
        bt_fmt(err, errlen, "%s sent a link to another address; it was not followed", h->label);
        return BT_ECONNECTOR;
    }
    char *body = call->body ? json_dumps(call->body, JSON_COMPACT) : NULL;
    if (call->body && !body) {
        free(url);
        bt_fmt(err, errlen, "%s: the request could not be encoded as JSON", h->label);
        return BT_EINVAL;
    }
    /* The path without its query, for log lines (filter values stay out). */
    char path[160];
    const char *pstart = strstr(url, "://");
    pstart = pstart ? strchr(pstart + 3, '/') : NULL;
    shown(pstart ? pstart : "/", pstart ? strcspn(pstart, "?") : 1, path, sizeof path, 120);

    enum bt_err e = BT_OK;
    for (int attempt = 1;; attempt++) {
        long timeout = call->timeout_ms > 0 ? call->timeout_ms : (long)h->timeout_ms;
        if (call->deadline_ms) {
            int64_t left = call->deadline_ms - bt_mono_ms();
            if (left < 1) {
                bt_fmt(err, errlen, "%s did not answer in the time the tool allows", h->label);
                e = BT_ETIMEOUT;
                break;
            }
            if (left < timeout)
                timeout = (long)left;
        }
        if ((e = slot_take(h, call->deadline_ms, err, errlen)) != BT_OK)
            break;
        struct attempt a = {.h = h, .body = BT_BUF_INIT((size_t)h->max_body_bytes + 1)};
        a.curl = handle_take(h);
        if (!a.curl) {
            slot_give(h);
            bt_fmt(err, errlen, "%s: libcurl could not make a handle", h->label);
            e = BT_ENOMEM;
            break;
        }
        attempt_once(&a, call->method, url, body, timeout, !call->idempotent);
        handle_give(h, a.curl);
        slot_give(h);
        bt_buf_free(&a.body);

        json_decref(reply->body);
        reply->body = a.json;
        reply->status = a.status;
        reply->attempts = attempt;
        reply->sent = a.sent;
        if (a.kind == O_OK) {
            e = BT_OK;
            break;
        }
        if (a.kind == O_NOT_FOUND || a.kind == O_PERMANENT) {
            bt_fmt(err, errlen, "%s %s", h->label, a.msg);
            e = a.kind == O_NOT_FOUND ? BT_ENOENT : BT_ECONNECTOR;
            break;
        }

        /* Transient. Retried only when the request is idempotent or never
         * left, the retries are not used up, and the wait fits. */
        bool unknown_outcome = !call->idempotent && a.sent;
        e = transient_code(a.kind, a.status, unknown_outcome);
        char tried[48] = "";
        if (attempt > 1)
            bt_fmt(tried, sizeof tried, " (tried %d times)", attempt);
        if (unknown_outcome) {
            bt_fmt(err, errlen,
                   "%s %s%s; not retried, because the request may already have been acted on",
                   h->label, a.msg, tried);
            break;
        }
        if (attempt > h->retries) {
            bt_fmt(err, errlen, "%s %s%s", h->label, a.msg, tried);
            break;
        }
        int64_t wait = backoff_ms(h, attempt);
        if (a.retry_after_ms > 0) {
            if (a.retry_after_ms > h->retry_cap_ms) {
                bt_fmt(err, errlen,
                       "%s %s%s; it asks to wait %lld s, longer than retry_cap_ms (%lld ms), so "
                       "it was not retried",
                       h->label, a.msg, tried, (long long)(a.retry_after_ms / 1000),
                       h->retry_cap_ms);
                break;
            }
            wait = a.retry_after_ms;
        }
        if (call->deadline_ms && bt_mono_ms() + wait >= call->deadline_ms) {
            bt_fmt(err, errlen, "%s %s%s; no time was left to retry within the tool's timeout",
                   h->label, a.msg, tried);
            break;
        }
        bt_log(BT_LOG_INFO, "connectors", NULL,
               "connector '%s': %s %s: %s; retry %d of %lld in %lld ms", h->name, call->method,
               path, a.msg, attempt, h->retries, (long long)wait);
        json_decref(reply->body);
        reply->body = NULL;
        sleep_ms(wait);
    }
    /* The service failing is worth a warning; an answer the caller handles
     * (404, a refused filter) is not. */
    if (e != BT_OK)
        bt_log(e == BT_EUNAVAIL || e == BT_ETIMEOUT ? BT_LOG_WARN : BT_LOG_INFO, "connectors", NULL,
               "connector '%s': %s %s failed after %d request%s (%s)", h->name, call->method, path,
               reply->attempts, reply->attempts == 1 ? "" : "s", bt_strerror(e));
    free(body);
    free(url);
    return e;
}
