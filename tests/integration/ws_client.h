/*
 * ws_client.h - what the tests that drive `baton serve` share: a free
 * loopback port, plain HTTP GET, and a minimal WebSocket client (RFC 6455:
 * a real handshake whose accept value is checked, masked frames, fragments,
 * control frames skipped). Every wait is bounded by a deadline.
 */
#ifndef BT_TEST_WS_CLIENT_H
#define BT_TEST_WS_CLIENT_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <sys/socket.h>

#include "harness.h"

#ifndef WAIT_MS
#define WAIT_MS 20000
#endif

static inline int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int p = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        p = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return p;
}

static inline int tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static inline bool send_all(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0)
            return false;
        p += k;
        n -= (size_t)k;
    }
    return true;
}

/* Read at least one byte into b before the deadline; false on EOF/timeout. */
static inline bool read_more(int fd, bt_buf *b, int64_t deadline)
{
    int64_t left = deadline - bt_mono_ms();
    if (left <= 0)
        return false;
    struct pollfd pfd = {fd, POLLIN, 0};
    if (poll(&pfd, 1, (int)left) <= 0)
        return false;
    char buf[8192];
    ssize_t k = recv(fd, buf, sizeof buf, 0);
    return k > 0 && bt_buf_append(b, buf, (size_t)k) == BT_OK;
}

/* A plain HTTP GET to port; returns the status and the body (new) in
 * *body; -1 when nothing answered. */
static inline int http_get_at(int port, const char *path, char **body)
{
    *body = NULL;
    int fd = tcp_connect(port);
    if (fd < 0)
        return -1;
    char req[256];
    bt_fmt(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n",
           path, port);
    bt_buf b = BT_BUF_INIT(1 << 20);
    int64_t deadline = bt_mono_ms() + WAIT_MS;
    int status = -1;
    if (send_all(fd, req, strlen(req))) {
        while (read_more(fd, &b, deadline))
            ;
    }
    close(fd);
    if (b.len > 12 && strncmp(b.data, "HTTP/1.1 ", 9) == 0)
        status = (int)strtol(b.data + 9, NULL, 10);
    char *sep = b.data ? strstr(b.data, "\r\n\r\n") : NULL;
    *body = bt_strdup(sep ? sep + 4 : "");
    bt_buf_free(&b);
    return status;
}

/* ---- a minimal WebSocket client (RFC 6455) ---------------------------------- */

struct ws {
    int fd;
    bt_buf in;
};

/* Open /ws on port with an Origin (NULL: none, not a browser); NULL when
 * the handshake fails. */
static inline struct ws *ws_open_at(int port, const char *origin)
{
    int fd = tcp_connect(port);
    if (fd < 0)
        return NULL;
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    char req[512], orig[300] = "";
    if (origin)
        bt_fmt(orig, sizeof orig, "Origin: %s\r\n", origin);
    bt_fmt(req, sizeof req,
           "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
           port, key, orig);
    struct ws *w = bt_calloc(1, sizeof *w);
    w->fd = fd;
    w->in.max = 1 << 22;
    int64_t deadline = bt_mono_ms() + WAIT_MS;
    bool ok = send_all(fd, req, strlen(req));
    char *end = NULL;
    while (ok && !(end = w->in.data ? strstr(w->in.data, "\r\n\r\n") : NULL))
        ok = read_more(fd, &w->in, deadline);
    /* The accept value proves the server really did the handshake:
     * base64(sha1(key + GUID)). */
    char cat[128];
    unsigned char sha[EVP_MAX_MD_SIZE];
    unsigned int shalen = 0;
    unsigned char want[64];
    bt_fmt(cat, sizeof cat, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    EVP_Digest(cat, strlen(cat), sha, &shalen, EVP_sha1(), NULL);
    EVP_EncodeBlock(want, sha, (int)shalen);
    if (!ok || strncmp(w->in.data, "HTTP/1.1 101", 12) != 0 ||
        !strstr(w->in.data, (const char *)want)) {
        close(fd);
        bt_buf_free(&w->in);
        free(w);
        return NULL;
    }
    /* Keep what followed the headers. */
    size_t used = (size_t)(end + 4 - w->in.data);
    memmove(w->in.data, w->in.data + used, w->in.len - used);
    w->in.len -= used;
    return w;
}

static inline void ws_close(struct ws *w)
{
    if (!w)
        return;
    close(w->fd);
    bt_buf_free(&w->in);
    free(w);
}

/* Send one masked frame (opcode 1 text, 0 continuation), fin as given. */
static inline bool ws_send_frame(struct ws *w, int opcode, bool fin, const void *data, size_t n)
{
    bt_buf f = BT_BUF_INIT(1 << 22);
    unsigned char h[14];
    size_t hl = 0;
    h[hl++] = (unsigned char)((fin ? 0x80 : 0) | opcode);
    if (n < 126) {
        h[hl++] = (unsigned char)(0x80 | n);
    } else if (n < 65536) {
        h[hl++] = 0x80 | 126;
        h[hl++] = (unsigned char)(n >> 8);
        h[hl++] = (unsigned char)n;
    } else {
        h[hl++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            h[hl++] = (unsigned char)((uint64_t)n >> (8 * i));
    }
    const unsigned char mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    memcpy(h + hl, mask, 4);
    hl += 4;
    bt_buf_append(&f, h, hl);
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i] ^ mask[i % 4];
        bt_buf_append(&f, &c, 1);
    }
    bool ok = send_all(w->fd, f.data, f.len);
    bt_buf_free(&f);
    return ok;
}

static inline bool ws_send(struct ws *w, const char *text)
{
    return ws_send_frame(w, 1, true, text, strlen(text));
}

/* Next text message as JSON (new), skipping control frames; NULL on
 * timeout or close. */
static inline json_t *ws_recv_until(struct ws *w, int64_t deadline)
{
    for (;;) {
        const unsigned char *d = (const unsigned char *)w->in.data;
        if (w->in.len >= 2) {
            size_t n = d[1] & 0x7f, hl = 2;
            if (n == 126 && w->in.len >= 4) {
                n = ((size_t)d[2] << 8) | d[3];
                hl = 4;
            } else if (n == 127 && w->in.len >= 10) {
                n = 0;
                for (int i = 0; i < 8; i++)
                    n = (n << 8) | d[2 + i];
                hl = 10;
            } else if (n >= 126) {
                hl = 0;
            }
            if (hl && w->in.len >= hl + n) {
                int opcode = d[0] & 0x0f;
                json_t *msg = opcode == 1 ? json_loadb(w->in.data + hl, n, 0, NULL) : NULL;
                memmove(w->in.data, w->in.data + hl + n, w->in.len - hl - n);
                w->in.len -= hl + n;
                if (opcode == 8)
                    return NULL;
                if (msg)
                    return msg;
                continue;
            }
        }
        if (!read_more(w->fd, &w->in, deadline))
            return NULL;
    }
}

/* Next text message as JSON (new) within timeout_ms; NULL on timeout or
 * close. */
static inline json_t *ws_recv(struct ws *w, int timeout_ms)
{
    return ws_recv_until(w, bt_mono_ms() + timeout_ms);
}

#endif
