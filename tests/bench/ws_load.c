/*
 * ws_load.c - the WebSocket load generator of `make bench`.
 *
 *   ws_load --port N --conns C --messages M [--warmup W] [--text TEXT]
 *           [--token TOKEN]... [--server-pid PID] [--idle] [--json]
 *           [--timeout S] [--window K] [--rate R]
 *
 * Opens C connections to ws://127.0.0.1:N/ws. With a token (baton) each
 * connection first signs in (hello, then waits for welcome); without one
 * (the echo baseline) it starts at once. Then every connection runs a closed
 * loop: send {"type":"say","id":K,"text":TEXT}, wait for the answer, send the
 * next, until M messages were answered in all. The answer is, for baton, the
 * reply/plan/result whose in_reply_to is K; for the echo server, the very
 * bytes that were sent.
 *
 * --rate R paces the says instead: R messages per second over all the
 * connections (each sends one every C/R seconds), an offered load the
 * server may or may not keep up with; latency is then what a person sees at
 * that load rather than the queueing of a saturated server.
 *
 * W warm-up messages run first and are not counted. Between warm-up and the
 * measured phase nothing is in flight, so the server's CPU time read from
 * /proc/PID/stat before and after the measured phase belongs to exactly M
 * messages. --idle opens the connections, signs them in, reports the
 * server's memory with all of them open, and closes them.
 *
 * One lws context and one loop serve every connection: a message costs the
 * generator a few microseconds, far below what a server spends on it (the
 * generator's own CPU per message is printed to show it).
 *
 * Exit status: 0 when the run completed; 1 on a protocol error, an `error`
 * message (or a reply of kind error), a connection that failed or closed, or
 * the overall timeout; 2 on a bad command line.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libwebsockets.h>

#define TOKENS_MAX 64
#define CONNS_MAX 100000L
#define MESSAGES_MAX 100000000L
#define TEXT_MAX 4096          /* longest --text accepted */
#define RX_MAX (1024 * 1024)   /* longest server message accepted */
#define TICK_US 20000LL        /* the loop wakes up at least this often */
#define SETTLE_NS 1000000000LL /* --idle: pause before reading the RSS */
#define FD_SPARE 64            /* descriptors kept beyond one per connection */

struct opts {
    long port;
    long conns;
    long messages;
    long warmup;
    long timeout_s;
    long window; /* connections being opened (or signing in) at once */
    long server_pid;
    const char *text;
    const char *tokens[TOKENS_MAX];
    size_t ntokens;
    bool idle;
    bool json;
    long rate; /* --rate: messages per second over all connections (0: as fast as answered) */
};

enum cstate { C_NEW, C_CONNECTING, C_HELLO, C_READY, C_WAIT };

struct lconn {
    struct lws *wsi;
    struct load *ld;
    long index;
    enum cstate st;
    bool send_hello; /* the next WRITEABLE writes hello */
    bool send_say;   /* the next WRITEABLE writes a say */
    long long id;    /* the say waiting for its answer */
    int64_t sent_ns;
    int64_t due_ns; /* --rate: when this connection may send next */
    bool paced;     /* --rate: a say waits for due_ns */
    char *rx;
    size_t rx_len, rx_cap;
};

enum phase { P_CONNECT, P_SETTLE, P_WARMUP, P_MEASURE, P_DONE };

struct load {
    struct opts o;
    struct lws_context *ctx;
    struct lconn *c;
    long opened;  /* connections started */
    long pending; /* started, not yet ready (handshake or hello) */
    long ready;
    enum phase phase;
    long target; /* messages of the current phase */
    long sent, answered;
    long long next_id;
    int64_t *lat_ns; /* measured phase, one per answer */
    long nlat;
    char *say_text; /* --text as a JSON string literal, quotes included */
    unsigned char *scratch;
    size_t scratch_cap;
    int64_t deadline_ns, settle_until_ns;
    int64_t t_start_ns, t_end_ns;
    unsigned long long cpu_before, cpu_after; /* server clock ticks */
    double client_cpu_before, client_cpu_after;
    long rss_before_kb, rss_kb, hwm_kb;
    char reply_kind[32];
    bool failed;
    char err[512];
    lws_sorted_usec_list_t tick;
    lws_sorted_usec_list_t pace;
    int64_t pace_at_ns; /* when on_pace is due (0: not scheduled) */
};

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The first failure is the one reported; the loop stops after it. */
static void fail(struct load *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct load *ld, const char *fmt, ...)
{
    if (ld->failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ld->err, sizeof ld->err, fmt, ap);
    va_end(ap);
    ld->failed = true;
}

/* ---- /proc of the server ------------------------------------------------ */

/* utime + stime of a whole process (all its threads), in clock ticks. */
static bool proc_cpu_ticks(long pid, unsigned long long *ticks)
{
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: count fields from
     * the last ')'. Field 3 (state) follows it; utime and stime are 14, 15. */
    char *p = strrchr(buf, ')');
    if (!p)
        return false;
    p++;
    unsigned long long v[15] = {0};
    for (int field = 3; field <= 15; field++) {
        while (*p == ' ')
            p++;
        if (!*p)
            return false;
        char *end;
        v[field - 3] = strtoull(p, &end, 10);
        if (field == 3) /* the state is a letter */
            end = p + 1;
        p = end;
    }
    *ticks = v[14 - 3] + v[15 - 3];
    return true;
}

/* VmRSS and VmHWM of a process, in kB; false when it cannot be read. */
static bool proc_rss_kb(long pid, long *rss, long *hwm)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    *rss = *hwm = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0)
            *rss = strtol(line + 6, NULL, 10);
        else if (strncmp(line, "VmHWM:", 6) == 0)
            *hwm = strtol(line + 6, NULL, 10);
    }
    fclose(f);
    return *rss >= 0 && *hwm >= 0;
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* ---- messages -------------------------------------------------------------- */

/* Make room for one outgoing message with LWS_PRE bytes of headroom. */
static unsigned char *scratch(struct load *ld, size_t need)
{
    if (ld->scratch_cap < LWS_PRE + need + 1) {
        free(ld->scratch);
        ld->scratch_cap = LWS_PRE + need + 1;
        ld->scratch = malloc(ld->scratch_cap);
        if (!ld->scratch) {
            fprintf(stderr, "ws_load: out of memory\n");
            exit(1);
        }
    }
    return ld->scratch + LWS_PRE;
}

/* The say for id K. The echo check rebuilds it to compare, so it must be a
 * pure function of K. */
static size_t format_say(const struct load *ld, long long id, char *out, size_t cap)
{
    int n = snprintf(out, cap, "{\"type\":\"say\",\"id\":%lld,\"text\":%s}", id, ld->say_text);
    return n < 0 ? 0 : (size_t)n;
}

static size_t say_len_max(const struct load *ld)
{
    return strlen(ld->say_text) + 64;
}

static int write_text(struct lconn *c, unsigned char *p, size_t n)
{
    if (lws_write(c->wsi, p, n, LWS_WRITE_TEXT) < (int)n) {
        fail(c->ld, "connection %ld: write failed", c->index);
        return -1;
    }
    return 0;
}

static int write_hello(struct lconn *c)
{
    struct load *ld = c->ld;
    const char *token = ld->o.tokens[(size_t)c->index % ld->o.ntokens];
    json_t *hello =
        json_pack("{s:s, s:I, s:s}", "type", "hello", "id", (json_int_t)c->index, "token", token);
    char *text = hello ? json_dumps(hello, JSON_COMPACT) : NULL;
    json_decref(hello);
    if (!text) {
        fail(ld, "cannot build hello");
        return -1;
    }
    size_t n = strlen(text);
    unsigned char *p = scratch(ld, n);
    memcpy(p, text, n);
    free(text);
    c->send_hello = false;
    return write_text(c, p, n);
}

static int write_say(struct lconn *c)
{
    struct load *ld = c->ld;
    size_t cap = say_len_max(ld);
    unsigned char *p = scratch(ld, cap);
    c->id = ++ld->next_id;
    size_t n = format_say(ld, c->id, (char *)p, cap);
    c->send_say = false;
    c->st = C_WAIT;
    c->sent_ns = now_ns();
    return write_text(c, p, n);
}

static void on_pace(lws_sorted_usec_list_t *sul);

/* --rate: wake the loop at t (or sooner, when it is already due earlier). */
static void pace_at(struct load *ld, int64_t t)
{
    if (ld->pace_at_ns && ld->pace_at_ns <= t)
        return;
    int64_t us = (t - now_ns()) / 1000;
    ld->pace_at_ns = t;
    lws_sul_schedule(ld->ctx, 0, &ld->pace, on_pace, us > 50 ? us : 50);
}

/* Send the next say on this connection if the phase wants more. With
 * --rate each connection sends at most one say every conns/rate seconds
 * (from its previous send), so the server sees the offered load rather
 * than as much as it can take; a say that is due while the previous one is
 * still unanswered goes as soon as the answer comes. */
static void next_say(struct lconn *c)
{
    struct load *ld = c->ld;
    if ((ld->phase != P_WARMUP && ld->phase != P_MEASURE) || ld->sent >= ld->target ||
        c->send_say || c->st == C_WAIT)
        return; /* the connection has its one say in flight (or queued) already */
    if (ld->o.rate > 0 && now_ns() < c->due_ns) {
        c->paced = true; /* on_pace sends it */
        pace_at(ld, c->due_ns);
        return;
    }
    c->paced = false;
    if (ld->o.rate > 0)
        c->due_ns = (c->due_ns ? c->due_ns : now_ns()) +
                    (int64_t)(1e9 * (double)ld->o.conns / (double)ld->o.rate);
    ld->sent++;
    c->send_say = true;
    lws_callback_on_writable(c->wsi);
}

static void start_phase(struct load *ld, enum phase ph, long target)
{
    ld->phase = ph;
    ld->target = target;
    ld->sent = ld->answered = 0;
    if (ph == P_MEASURE) {
        if (ld->o.server_pid > 0 && !proc_cpu_ticks(ld->o.server_pid, &ld->cpu_before))
            fail(ld, "cannot read /proc/%ld/stat", ld->o.server_pid);
        ld->client_cpu_before = self_cpu_s();
        ld->t_start_ns = now_ns();
    }
    for (long i = 0; i < ld->o.conns; i++) {
        /* --rate: spread the connections' first says over one interval. */
        if (ld->o.rate > 0 && !ld->c[i].due_ns)
            ld->c[i].due_ns = now_ns() + (int64_t)(1e9 * (double)i / (double)ld->o.rate);
        next_say(&ld->c[i]);
    }
}

/* Every connection is ready: warm up, measure, or (idle) wait and read. */
static void all_ready(struct load *ld)
{
    if (ld->o.idle) {
        ld->phase = P_SETTLE;
        ld->settle_until_ns = now_ns() + SETTLE_NS;
    } else if (ld->o.warmup > 0) {
        start_phase(ld, P_WARMUP, ld->o.warmup);
    } else {
        start_phase(ld, P_MEASURE, ld->o.messages);
    }
}

static void conn_ready(struct lconn *c)
{
    struct load *ld = c->ld;
    c->st = C_READY;
    ld->pending--;
    if (++ld->ready == ld->o.conns)
        all_ready(ld);
}

static void phase_answered(struct load *ld)
{
    if (++ld->answered < ld->target)
        return;
    if (ld->phase == P_WARMUP) {
        start_phase(ld, P_MEASURE, ld->o.messages);
        return;
    }
    ld->t_end_ns = now_ns();
    ld->client_cpu_after = self_cpu_s();
    if (ld->o.server_pid > 0) {
        if (!proc_cpu_ticks(ld->o.server_pid, &ld->cpu_after) ||
            !proc_rss_kb(ld->o.server_pid, &ld->rss_kb, &ld->hwm_kb))
            fail(ld, "cannot read /proc/%ld", ld->o.server_pid);
    }
    ld->phase = P_DONE;
}

/* An answer arrived for the say in flight on c. */
static void got_answer(struct lconn *c)
{
    struct load *ld = c->ld;
    if (ld->phase == P_MEASURE)
        ld->lat_ns[ld->nlat++] = now_ns() - c->sent_ns;
    c->st = C_READY;
    phase_answered(ld);
    next_say(c);
}

/* Echo mode: the message must be the say that was sent, byte for byte. */
static void on_echo(struct lconn *c)
{
    struct load *ld = c->ld;
    if (c->st != C_WAIT) {
        fail(ld, "connection %ld: a message when none was expected", c->index);
        return;
    }
    char want[TEXT_MAX * 6 + 128];
    size_t n = format_say(ld, c->id, want, sizeof want);
    if (c->rx_len != n || memcmp(c->rx, want, n) != 0) {
        fail(ld, "connection %ld: the echo of id %lld differs from what was sent", c->index, c->id);
        return;
    }
    got_answer(c);
}

/* baton mode: welcome, the answers to say, and pushed messages (ignored). */
static void on_baton(struct lconn *c)
{
    struct load *ld = c->ld;
    json_error_t jerr;
    json_t *msg = json_loadb(c->rx, c->rx_len, 0, &jerr);
    const char *type = json_string_value(json_object_get(msg, "type"));
    json_t *irt = json_object_get(msg, "in_reply_to");
    if (!type) {
        fail(ld, "connection %ld: not a JSON object with a type: %.200s", c->index, c->rx);
    } else if (strcmp(type, "error") == 0) {
        fail(ld, "connection %ld: error %s: %s", c->index,
             json_string_value(json_object_get(msg, "code")),
             json_string_value(json_object_get(msg, "message")));
    } else if (!irt || json_is_null(irt)) {
        /* A message the server pushes on its own (notice, state, card):
         * not an answer to anything this generator sent. */
    } else if (strcmp(type, "welcome") == 0) {
        if (c->st != C_HELLO || json_integer_value(irt) != c->index)
            fail(ld, "connection %ld: unexpected welcome", c->index);
        else
            conn_ready(c);
    } else if (strcmp(type, "reply") == 0 || strcmp(type, "plan") == 0 ||
               strcmp(type, "result") == 0) {
        const char *kind = json_string_value(json_object_get(msg, "kind"));
        if (c->st != C_WAIT || !json_is_integer(irt) || json_integer_value(irt) != c->id) {
            fail(ld, "connection %ld: %s for a request not in flight", c->index, type);
        } else if (kind && strcmp(kind, "error") == 0) {
            fail(ld, "connection %ld: reply of kind error: %s", c->index,
                 json_string_value(json_object_get(msg, "text")));
        } else {
            snprintf(ld->reply_kind, sizeof ld->reply_kind, "%s", kind ? kind : type);
            got_answer(c);
        }
    } else {
        fail(ld, "connection %ld: unexpected message type %s", c->index, type);
    }
    json_decref(msg);
}

/* Collect a fragment; on the last one, handle the whole message. */
static void on_receive(struct lconn *c, const void *in, size_t len)
{
    struct load *ld = c->ld;
    if (len > RX_MAX - c->rx_len) {
        fail(ld, "connection %ld: a server message longer than %d bytes", c->index, RX_MAX);
        return;
    }
    if (c->rx_len + len + 1 > c->rx_cap) {
        size_t cap = c->rx_len + len + 1 > 2 * c->rx_cap ? c->rx_len + len + 1 : 2 * c->rx_cap;
        char *grown = realloc(c->rx, cap);
        if (!grown) {
            fail(ld, "out of memory");
            return;
        }
        c->rx = grown;
        c->rx_cap = cap;
    }
    memcpy(c->rx + c->rx_len, in, len);
    c->rx_len += len;
    c->rx[c->rx_len] = '\0';
    if (!lws_is_final_fragment(c->wsi) || lws_remaining_packet_payload(c->wsi) != 0)
        return;
    if (ld->o.ntokens)
        on_baton(c);
    else
        on_echo(c);
    c->rx_len = 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    (void)user;
    struct lconn *c = lws_get_opaque_user_data(wsi);
    if (!c)
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    struct load *ld = c->ld;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        fail(ld, "connection %ld: cannot connect: %s", c->index, in ? (const char *)in : "?");
        c->wsi = NULL;
        return 0;
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        if (ld->o.ntokens) {
            c->st = C_HELLO;
            c->send_hello = true;
            lws_callback_on_writable(wsi);
        } else {
            conn_ready(c);
        }
        return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        on_receive(c, in, len);
        return 0;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if (c->send_hello)
            return write_hello(c);
        if (c->send_say)
            return write_say(c);
        return 0;
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (ld->phase != P_DONE)
            fail(ld, "connection %ld: closed by the server", c->index);
        c->wsi = NULL;
        return 0;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

/* ---- the loop ----------------------------------------------------------------- */

/* Start connections while fewer than --window are still opening. Called
 * from the loop, outside any lws callback. The window also keeps baton's
 * job queue (256) from overflowing with hellos. */
static void open_more(struct load *ld)
{
    while (ld->opened < ld->o.conns && ld->pending < ld->o.window && !ld->failed) {
        struct lconn *c = &ld->c[ld->opened];
        struct lws_client_connect_info ci;
        memset(&ci, 0, sizeof ci);
        ci.context = ld->ctx;
        ci.address = "127.0.0.1";
        ci.port = (int)ld->o.port;
        ci.path = "/ws";
        ci.host = "127.0.0.1";
        ci.local_protocol_name = "load";
        ci.opaque_user_data = c;
        ci.pwsi = &c->wsi;
        c->st = C_CONNECTING;
        ld->opened++;
        ld->pending++;
        if (!lws_client_connect_via_info(&ci) && !ld->failed)
            fail(ld, "connection %ld: lws_client_connect_via_info failed", c->index);
    }
}

/* --rate: send the says whose time has come, then sleep until the next
 * one is due (one wake-up per say, not a busy tick). */
static void on_pace(lws_sorted_usec_list_t *sul)
{
    struct load *ld = lws_container_of(sul, struct load, pace);
    ld->pace_at_ns = 0;
    int64_t now = now_ns(), next = 0;
    for (long i = 0; i < ld->o.conns; i++) {
        struct lconn *c = &ld->c[i];
        if (c->paced && now >= c->due_ns)
            next_say(c);
        else if (c->paced && (!next || c->due_ns < next))
            next = c->due_ns;
    }
    if (next)
        pace_at(ld, next);
}

/* Wakes the loop regularly so deadlines and signals are seen. */
static void on_tick(lws_sorted_usec_list_t *sul)
{
    struct load *ld = lws_container_of(sul, struct load, tick);
    lws_sul_schedule(ld->ctx, 0, &ld->tick, on_tick, TICK_US);
}

static const char *phase_name(enum phase ph)
{
    static const char *const names[] = {"connecting", "settling", "warm-up", "measuring", "done"};
    return names[ph];
}

static void run(struct load *ld)
{
    ld->deadline_ns = now_ns() + (int64_t)ld->o.timeout_s * 1000000000LL;
    lws_sul_schedule(ld->ctx, 0, &ld->tick, on_tick, TICK_US);
    while (!ld->failed && ld->phase != P_DONE) {
        if (interrupted) {
            fail(ld, "interrupted");
            break;
        }
        int64_t now = now_ns();
        if (now > ld->deadline_ns) {
            fail(ld, "timeout after %ld s while %s: %ld/%ld connections ready, %ld/%ld answered",
                 ld->o.timeout_s, phase_name(ld->phase), ld->ready, ld->o.conns, ld->answered,
                 ld->target);
            break;
        }
        if (ld->phase == P_CONNECT)
            open_more(ld);
        if (ld->phase == P_SETTLE && now >= ld->settle_until_ns) {
            if (ld->o.server_pid > 0 && !proc_rss_kb(ld->o.server_pid, &ld->rss_kb, &ld->hwm_kb))
                fail(ld, "cannot read /proc/%ld/status", ld->o.server_pid);
            ld->phase = P_DONE;
            break;
        }
        if (lws_service(ld->ctx, 0) < 0)
            fail(ld, "lws_service failed");
    }
    lws_sul_cancel(&ld->tick);
    lws_sul_cancel(&ld->pace);
}

/* ---- setup and report ------------------------------------------------------------ */

/* 10k connections need 10k descriptors: raise the soft limit, and the hard
 * one when allowed (root), before lws sizes its tables from it. */
static bool raise_nofile(long need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return false;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur >= (rlim_t)need)
        return true;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < (rlim_t)need) {
        struct rlimit want = {(rlim_t)need, (rlim_t)need};
        if (setrlimit(RLIMIT_NOFILE, &want) == 0)
            return true;
        fprintf(stderr,
                "ws_load: %ld connections need %ld open files; the hard limit is %llu and "
                "cannot be raised (%s): run as root or raise `ulimit -Hn`\n",
                need - FD_SPARE, need, (unsigned long long)rl.rlim_max, strerror(errno));
        return false;
    }
    rl.rlim_cur = (rlim_t)need;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        fprintf(stderr, "ws_load: cannot raise the open-file limit to %ld: %s\n", need,
                strerror(errno));
        return false;
    }
    return true;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array, in milliseconds. */
static double pct_ms(const int64_t *v, long n, double q)
{
    if (n <= 0)
        return 0;
    long rank = (long)ceil(q * (double)n);
    if (rank < 1)
        rank = 1;
    return (double)v[rank - 1] / 1e6;
}

static void report_load(struct load *ld)
{
    qsort(ld->lat_ns, (size_t)ld->nlat, sizeof *ld->lat_ns, cmp_i64);
    double secs = (double)(ld->t_end_ns - ld->t_start_ns) / 1e9;
    double rate = secs > 0 ? (double)ld->o.messages / secs : 0;
    double p50 = pct_ms(ld->lat_ns, ld->nlat, 0.50), p90 = pct_ms(ld->lat_ns, ld->nlat, 0.90);
    double p99 = pct_ms(ld->lat_ns, ld->nlat, 0.99), pmax = pct_ms(ld->lat_ns, ld->nlat, 1.0);
    double client_us =
        (ld->client_cpu_after - ld->client_cpu_before) * 1e6 / (double)ld->o.messages;
    double server_us = -1;
    if (ld->o.server_pid > 0)
        server_us = (double)(ld->cpu_after - ld->cpu_before) * 1e6 / (double)sysconf(_SC_CLK_TCK) /
                    (double)ld->o.messages;
    if (ld->o.json) {
        printf("{\"mode\":\"load\",\"conns\":%ld,\"messages\":%ld,\"warmup\":%ld,"
               "\"elapsed_s\":%.3f,\"msgs_per_s\":%.1f,\"p50_ms\":%.3f,\"p90_ms\":%.3f,"
               "\"p99_ms\":%.3f,\"max_ms\":%.3f,\"server_cpu_us_per_msg\":%.1f,"
               "\"server_rss_kb\":%ld,\"server_hwm_kb\":%ld,\"client_cpu_us_per_msg\":%.1f,"
               "\"reply_kind\":\"%s\"}\n",
               ld->o.conns, ld->o.messages, ld->o.warmup, secs, rate, p50, p90, p99, pmax,
               server_us, ld->rss_kb, ld->hwm_kb, client_us,
               ld->o.ntokens ? ld->reply_kind : "echo");
        return;
    }
    printf("ws_load: %ld connections, %ld messages after %ld warm-up (%s)\n", ld->o.conns,
           ld->o.messages, ld->o.warmup, ld->o.ntokens ? "baton" : "echo");
    printf("  throughput  %.1f msgs/s (%.3f s)\n", rate, secs);
    printf("  latency     p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  max %.3f ms\n", p50, p90, p99,
           pmax);
    if (ld->o.server_pid > 0) {
        printf("  server CPU  %.1f us/msg (utime+stime of pid %ld)\n", server_us, ld->o.server_pid);
        printf("  server RSS  VmRSS %ld kB, VmHWM %ld kB\n", ld->rss_kb, ld->hwm_kb);
    }
    printf("  client CPU  %.1f us/msg (this generator)\n", client_us);
    if (ld->o.ntokens)
        printf("  answers     kind %s\n", ld->reply_kind);
}

static void report_idle(struct load *ld, double connect_s)
{
    if (ld->o.json) {
        printf("{\"mode\":\"idle\",\"conns\":%ld,\"connect_s\":%.3f,\"server_rss_before_kb\":%ld,"
               "\"server_rss_kb\":%ld,\"server_hwm_kb\":%ld}\n",
               ld->o.conns, connect_s, ld->rss_before_kb, ld->rss_kb, ld->hwm_kb);
        return;
    }
    printf("ws_load: %ld idle connections%s open in %.3f s\n", ld->o.conns,
           ld->o.ntokens ? " (signed in)" : "", connect_s);
    if (ld->o.server_pid > 0)
        printf("  server RSS  before %ld kB, with all open %ld kB (VmHWM %ld kB)\n",
               ld->rss_before_kb, ld->rss_kb, ld->hwm_kb);
}

static int usage(const char *why)
{
    if (why)
        fprintf(stderr, "ws_load: %s\n", why);
    fprintf(stderr, "usage: ws_load --port N --conns C --messages M [--warmup W] [--text TEXT]\n"
                    "               [--token TOKEN]... [--server-pid PID] [--idle] [--json]\n"
                    "               [--timeout SECONDS] [--window K] [--rate MSGS_PER_S]\n");
    return 2;
}

static bool parse_num(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    memset(o, 0, sizeof *o);
    o->port = -1;
    o->conns = -1;
    o->messages = -1;
    o->warmup = 1000;
    o->timeout_s = 120;
    o->window = 128;
    o->text = "how many assets do we have?";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true;
        if (strcmp(a, "--idle") == 0) {
            o->idle = true;
            continue;
        }
        if (strcmp(a, "--json") == 0) {
            o->json = true;
            continue;
        }
        if (!v)
            return usage("an option is missing its value");
        i++;
        if (strcmp(a, "--port") == 0)
            ok = parse_num(v, 1, 65535, &o->port);
        else if (strcmp(a, "--conns") == 0)
            ok = parse_num(v, 1, CONNS_MAX, &o->conns);
        else if (strcmp(a, "--messages") == 0)
            ok = parse_num(v, 1, MESSAGES_MAX, &o->messages);
        else if (strcmp(a, "--warmup") == 0)
            ok = parse_num(v, 0, MESSAGES_MAX, &o->warmup);
        else if (strcmp(a, "--timeout") == 0)
            ok = parse_num(v, 1, 86400, &o->timeout_s);
        else if (strcmp(a, "--window") == 0)
            ok = parse_num(v, 1, 10000, &o->window);
        else if (strcmp(a, "--rate") == 0)
            ok = parse_num(v, 1, 10000000, &o->rate);
        else if (strcmp(a, "--server-pid") == 0)
            ok = parse_num(v, 1, 1L << 30, &o->server_pid);
        else if (strcmp(a, "--text") == 0) {
            o->text = v;
            ok = strlen(v) <= TEXT_MAX;
        } else if (strcmp(a, "--token") == 0) {
            ok = o->ntokens < TOKENS_MAX && *v;
            if (ok)
                o->tokens[o->ntokens++] = v;
        } else
            return usage("unknown option");
        if (!ok)
            return usage("a value is out of range");
    }
    if (o->port < 0 || o->conns < 0 || (o->messages < 0 && !o->idle))
        return usage("--port, --conns and --messages (or --idle) are required");
    if (o->messages < 0)
        o->messages = 0;
    return 0;
}

/* Connect, run the phases, report; false when anything failed (ld->err). */
static bool load_run(struct load *ld)
{
    lws_set_log_level(LLL_ERR, NULL);
    const struct lws_protocols protocols[] = {
        {"load", callback, 0, 65536, 0, NULL, 0},
        {NULL, NULL, 0, 0, 0, NULL, 0},
    };
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    ld->ctx = lws_create_context(&info);
    if (!ld->ctx) {
        fail(ld, "cannot create the lws context");
        return false;
    }
    if (ld->o.server_pid > 0 && !proc_rss_kb(ld->o.server_pid, &ld->rss_before_kb, &ld->hwm_kb))
        fail(ld, "cannot read /proc/%ld/status", ld->o.server_pid);
    int64_t t0 = now_ns();
    if (!ld->failed)
        run(ld);
    double connect_s = (double)(now_ns() - t0) / 1e9 - (ld->o.idle ? SETTLE_NS / 1e9 : 0);
    /* Reported before closing: 10k closes take a while and prove nothing. */
    if (!ld->failed) {
        if (ld->o.idle)
            report_idle(ld, connect_s);
        else
            report_load(ld);
        fflush(stdout);
    }
    ld->phase = P_DONE; /* closing now is expected */
    lws_context_destroy(ld->ctx);
    return !ld->failed;
}

int main(int argc, char **argv)
{
    struct load ld;
    memset(&ld, 0, sizeof ld);
    int rc = parse_args(argc, argv, &ld.o);
    if (rc)
        return rc;
    if (!raise_nofile(ld.o.conns + FD_SPARE))
        return 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    json_t *js = json_string(ld.o.text);
    ld.say_text = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
    json_decref(js);
    ld.c = calloc((size_t)ld.o.conns, sizeof *ld.c);
    ld.lat_ns = calloc((size_t)ld.o.messages + 1, sizeof *ld.lat_ns);
    if (!ld.say_text || !ld.c || !ld.lat_ns) {
        fail(&ld, "out of memory (or --text is not UTF-8)");
    } else {
        for (long i = 0; i < ld.o.conns; i++) {
            ld.c[i].ld = &ld;
            ld.c[i].index = i;
        }
        load_run(&ld);
    }
    for (long i = 0; ld.c && i < ld.o.conns; i++)
        free(ld.c[i].rx);
    free(ld.c);
    free(ld.lat_ns);
    free(ld.say_text);
    free(ld.scratch);
    if (ld.failed) {
        fprintf(stderr, "ws_load: %s\n", ld.err);
        return 1;
    }
    return 0;
}
