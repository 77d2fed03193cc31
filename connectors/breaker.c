/*
 * breaker.c - a circuit breaker per connector (see connectors_int.h).
 *
 * States, and what moves between them:
 *
 *   closed    calls go through; each transient failure (BT_EUNAVAIL,
 *             BT_ETIMEOUT) adds one to a count of consecutive failures, any
 *             other outcome resets it. At `failures` in a row: open.
 *   open      calls fail at once with BT_EUNAVAIL and a message naming the
 *             connector and when it will be tried again. After `cooldown`:
 *   half_open the next call is let through as the one probe; every other
 *             call fails fast while it runs. The probe succeeding (or failing
 *             in a way that shows the service answered) closes the breaker;
 *             a transient failure opens it again for another cooldown.
 *
 * Every change of state starts a new generation. A call remembers the
 * generation it entered in, and its outcome only counts if the breaker is
 * still in that generation: a slow call that started before the breaker
 * opened cannot close it again by succeeding late, and a failure that
 * started before a probe closed the breaker does not count against the
 * fresh closed state.
 *
 * Threads: every function takes the breaker's mutex; the clock is called
 * with the mutex held (it must not call back into the breaker).
 */
#include <pthread.h>
#include <stdlib.h>

#include "connectors/connectors_int.h"

struct bt_connectors__breaker {
    pthread_mutex_t mu;
    char *name;
    int threshold;       /* consecutive transient failures that open it */
    int64_t cooldown_ms; /* open -> half_open after this long */
    bt_connectors__clock_fn clock;
    void *clock_ctx;

    enum bt_connectors__breaker_state state;
    int failures;         /* consecutive, in the closed state */
    int opened_after;     /* the count that opened it last, for messages */
    int64_t opened_at;    /* clock value when it last opened */
    bool probe_in_flight; /* half_open: the one trial call is running */
    unsigned long gen;    /* bumped on every change of state */
    long long times_opened;
};

static int64_t default_clock(void *ctx)
{
    (void)ctx;
    return bt_mono_ms();
}

struct bt_connectors__breaker *bt_connectors__breaker_new(const char *name, int failures,
                                                          int64_t cooldown_ms,
                                                          bt_connectors__clock_fn clock,
                                                          void *clock_ctx)
{
    struct bt_connectors__breaker *b = bt_calloc(1, sizeof *b);
    pthread_mutex_init(&b->mu, NULL);
    b->name = bt_strdup(name ? name : "?");
    b->threshold = failures > 0 ? failures : BT_CONNECTORS__BREAKER_FAILURES;
    b->cooldown_ms = cooldown_ms > 0 ? cooldown_ms : BT_CONNECTORS__BREAKER_COOLDOWN_MS;
    b->clock = clock ? clock : default_clock;
    b->clock_ctx = clock ? clock_ctx : NULL;
    b->state = BT_CONNECTORS__BREAKER_CLOSED;
    return b;
}

void bt_connectors__breaker_free(struct bt_connectors__breaker *b)
{
    if (!b)
        return;
    pthread_mutex_destroy(&b->mu);
    free(b->name);
    free(b);
}

/* Settings change in place; a breaker that is open keeps its opening time
 * and is judged against the new cooldown from now on. */
void bt_connectors__breaker_configure(struct bt_connectors__breaker *b, int failures,
                                      int64_t cooldown_ms)
{
    pthread_mutex_lock(&b->mu);
    if (failures > 0)
        b->threshold = failures;
    if (cooldown_ms > 0)
        b->cooldown_ms = cooldown_ms;
    pthread_mutex_unlock(&b->mu);
}

bool bt_connectors__breaker_counts(enum bt_err rc)
{
    return rc == BT_EUNAVAIL || rc == BT_ETIMEOUT;
}

static void set_state(struct bt_connectors__breaker *b, enum bt_connectors__breaker_state s)
{
    b->state = s;
    b->gen++;
}

static void open_now(struct bt_connectors__breaker *b, int64_t now, int after)
{
    set_state(b, BT_CONNECTORS__BREAKER_OPEN);
    b->opened_at = now;
    b->opened_after = after;
    b->probe_in_flight = false;
    b->times_opened++;
}

enum bt_err bt_connectors__breaker_enter(struct bt_connectors__breaker *b,
                                         struct bt_connectors__ticket *t, char *err, size_t errlen)
{
    pthread_mutex_lock(&b->mu);
    int64_t now = b->clock(b->clock_ctx);
    enum bt_err e = BT_OK;
    t->probe = false;
    if (b->state == BT_CONNECTORS__BREAKER_OPEN && now - b->opened_at >= b->cooldown_ms) {
        set_state(b, BT_CONNECTORS__BREAKER_HALF_OPEN);
        b->probe_in_flight = false;
    }
    switch (b->state) {
    case BT_CONNECTORS__BREAKER_CLOSED:
        break;
    case BT_CONNECTORS__BREAKER_HALF_OPEN:
        if (!b->probe_in_flight) {
            b->probe_in_flight = true;
            t->probe = true;
            break;
        }
        bt_fmt(err, errlen,
               "connector '%s' is unavailable (circuit half-open after %d failures; a trial call "
               "is in progress)",
               b->name, b->opened_after);
        e = BT_EUNAVAIL;
        break;
    case BT_CONNECTORS__BREAKER_OPEN: {
        int64_t left = b->opened_at + b->cooldown_ms - now;
        bt_fmt(err, errlen,
               "connector '%s' is unavailable (circuit open after %d failures; retrying in %lld s)",
               b->name, b->opened_after, (long long)((left + 999) / 1000));
        e = BT_EUNAVAIL;
        break;
    }
    }
    t->gen = b->gen;
    pthread_mutex_unlock(&b->mu);
    return e;
}

void bt_connectors__breaker_leave(struct bt_connectors__breaker *b,
                                  const struct bt_connectors__ticket *t, enum bt_err rc)
{
    pthread_mutex_lock(&b->mu);
    bool failed = bt_connectors__breaker_counts(rc);
    int64_t now = b->clock(b->clock_ctx);
    if (t->gen != b->gen) {
        /* The state changed while this call ran: its outcome belongs to a
         * past state (see the top of this file). */
    } else if (b->state == BT_CONNECTORS__BREAKER_HALF_OPEN && t->probe) {
        if (failed) {
            open_now(b, now, b->opened_after);
        } else {
            set_state(b, BT_CONNECTORS__BREAKER_CLOSED);
            b->failures = 0;
            b->probe_in_flight = false;
        }
    } else if (b->state == BT_CONNECTORS__BREAKER_CLOSED) {
        if (!failed) {
            b->failures = 0;
        } else if (++b->failures >= b->threshold) {
            int after = b->failures;
            b->failures = 0;
            open_now(b, now, after);
        }
    }
    pthread_mutex_unlock(&b->mu);
}

void bt_connectors__breaker_info(struct bt_connectors__breaker *b,
                                 struct bt_connectors__breaker_info *out)
{
    pthread_mutex_lock(&b->mu);
    int64_t now = b->clock(b->clock_ctx);
    out->state = b->state;
    /* An open breaker whose cooldown has passed lets the next call through:
     * report it as half-open, which is what that call will find. */
    if (b->state == BT_CONNECTORS__BREAKER_OPEN && now - b->opened_at >= b->cooldown_ms)
        out->state = BT_CONNECTORS__BREAKER_HALF_OPEN;
    out->failures = b->state == BT_CONNECTORS__BREAKER_CLOSED ? b->failures : b->opened_after;
    out->threshold = b->threshold;
    out->times_opened = b->times_opened;
    out->retry_in_ms = 0;
    if (out->state == BT_CONNECTORS__BREAKER_OPEN)
        out->retry_in_ms = b->opened_at + b->cooldown_ms - now;
    pthread_mutex_unlock(&b->mu);
}

const char *bt_connectors__breaker_state_name(enum bt_connectors__breaker_state s)
{
    switch (s) {
    case BT_CONNECTORS__BREAKER_CLOSED:
        return "closed";
    case BT_CONNECTORS__BREAKER_OPEN:
        return "open";
    case BT_CONNECTORS__BREAKER_HALF_OPEN:
        return "half_open";
    }
    return "?";
}
