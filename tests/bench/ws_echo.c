/*
 * ws_echo.c - the baseline for `make bench`: a bare libwebsockets echo
 * server.
 *
 * It does the least a WebSocket server can do with a message: take it in
 * (fragments included), queue it and write it back. Whatever baton's daemon
 * spends per message beyond this server's cost is baton's own work (JSON,
 * the worker hand-off, the pipeline, the store), so ws_load reports baton's
 * CPU per message as a multiple of this one.
 *
 *   ws_echo --port N
 *
 * Listens on 127.0.0.1 only. WebSocket on any path; any plain HTTP request
 * gets "200 ok" so a script can poll for readiness. Exits 0 on SIGTERM or
 * SIGINT.
 */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>

#define MSG_MAX (1024 * 1024) /* longest message echoed; longer ones close */
#define OUTQ_MAX 64           /* messages waiting to be written per connection */
#define TICK_US 100000LL      /* how often the loop wakes up to see the stop flag */

struct msg {
    struct msg *next;
    size_t len;
    unsigned char data[]; /* LWS_PRE bytes of headroom, then the payload */
};

/* Per connection (lws allocates it, zeroed). */
struct pss {
    unsigned char *rx; /* message being assembled from fragments */
    size_t rx_len;
    struct msg *head, *tail;
    size_t nq;
};

struct echo {
    struct lws_context *ctx;
    lws_sorted_usec_list_t tick;
};

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void pss_clear(struct pss *p)
{
    free(p->rx);
    p->rx = NULL;
    p->rx_len = 0;
    while (p->head) {
        struct msg *m = p->head;
        p->head = m->next;
        free(m);
    }
    p->tail = NULL;
    p->nq = 0;
}

/* Append a fragment; false when the message would pass MSG_MAX. */
static bool rx_append(struct pss *p, const void *in, size_t len)
{
    if (len > MSG_MAX - p->rx_len)
        return false;
    unsigned char *grown = realloc(p->rx, p->rx_len + len + 1);
    if (!grown)
        return false;
    memcpy(grown + p->rx_len, in, len);
    p->rx = grown;
    p->rx_len += len;
    return true;
}

/* Queue the assembled message for writing; false when the queue is full. */
static bool queue_rx(struct pss *p)
{
    if (p->nq >= OUTQ_MAX)
        return false;
    struct msg *m = malloc(sizeof *m + LWS_PRE + p->rx_len);
    if (!m)
        return false;
    m->next = NULL;
    m->len = p->rx_len;
    if (p->rx_len)
        memcpy(m->data + LWS_PRE, p->rx, p->rx_len);
    if (p->tail)
        p->tail->next = m;
    else
        p->head = m;
    p->tail = m;
    p->nq++;
    free(p->rx);
    p->rx = NULL;
    p->rx_len = 0;
    return true;
}

static int http_ok(struct lws *wsi)
{
    static const char body[] = "ok\n";
    unsigned char buf[LWS_PRE + 512], *start = &buf[LWS_PRE], *p = start,
                                      *end = &buf[sizeof buf - 1];
    if (lws_add_http_common_headers(wsi, HTTP_STATUS_OK, "text/plain", sizeof body - 1, &p, end) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        return 1;
    lws_callback_on_writable(wsi);
    return 0;
}

static int http_body(struct lws *wsi)
{
    unsigned char buf[LWS_PRE + 8];
    memcpy(buf + LWS_PRE, "ok\n", 3);
    if (lws_write(wsi, buf + LWS_PRE, 3, LWS_WRITE_HTTP_FINAL) < 3)
        return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    struct pss *p = user;
    switch (reason) {
    case LWS_CALLBACK_HTTP:
        return http_ok(wsi);
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return http_body(wsi);
    case LWS_CALLBACK_ESTABLISHED:
        memset(p, 0, sizeof *p);
        return 0;
    case LWS_CALLBACK_RECEIVE:
        if (!rx_append(p, in, len))
            return -1;
        if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi) != 0)
            return 0;
        if (!queue_rx(p))
            return -1; /* a client that does not read its echoes is dropped */
        lws_callback_on_writable(wsi);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE: {
        struct msg *m = p->head;
        if (!m)
            return 0;
        size_t n = m->len;
        int w = lws_write(wsi, m->data + LWS_PRE, n, LWS_WRITE_TEXT);
        p->head = m->next;
        if (!p->head)
            p->tail = NULL;
        p->nq--;
        free(m);
        if (w < (int)n)
            return -1;
        if (p->head)
            lws_callback_on_writable(wsi);
        return 0;
    }
    case LWS_CALLBACK_CLOSED:
        pss_clear(p);
        return 0;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

/* Wakes the loop regularly so a signal is noticed even when idle. */
static void on_tick(lws_sorted_usec_list_t *sul)
{
    struct echo *e = lws_container_of(sul, struct echo, tick);
    lws_sul_schedule(e->ctx, 0, &e->tick, on_tick, TICK_US);
}

static int usage(void)
{
    fprintf(stderr, "usage: ws_echo --port N\n");
    return 2;
}

int main(int argc, char **argv)
{
    long port = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            char *end;
            port = strtol(argv[++i], &end, 10);
            if (*end || port < 1 || port > 65535)
                return usage();
        } else {
            return usage();
        }
    }
    if (port < 0)
        return usage();

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    lws_set_log_level(LLL_ERR, NULL);
    const struct lws_protocols protocols[] = {
        {"echo", callback, sizeof(struct pss), 4096, 0, NULL, 0},
        {NULL, NULL, 0, 0, 0, NULL, 0},
    };
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = (int)port;
    info.iface = "127.0.0.1";
    info.protocols = protocols;
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    struct echo e;
    memset(&e, 0, sizeof e);
    e.ctx = lws_create_context(&info);
    if (!e.ctx) {
        fprintf(stderr, "ws_echo: cannot listen on 127.0.0.1:%ld\n", port);
        return 1;
    }
    lws_sul_schedule(e.ctx, 0, &e.tick, on_tick, TICK_US);
    while (!stop_flag && lws_service(e.ctx, 0) >= 0)
        ;
    lws_sul_cancel(&e.tick);
    lws_context_destroy(e.ctx);
    return 0;
}
