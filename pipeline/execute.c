/* execute.c - see execute.h and docs/execution.md.
 *
 * One run of an execution, in order:
 *   1. load the execution and its plan from the store; check the state
 *      table; create the step rows if this is the first run;
 *   2. long plans (estimate, targets) go to the background queue and the
 *      call returns;
 *   3. take the asset locks of every changing step's target (refuse, or wait
 *      in line: state queued);
 *   4. mark the execution running, owned by this process (host, pid, start
 *      time), then run steps: each is marked running in the store before its
 *      thread starts, and its end is written when the thread is joined;
 *   5. after a failure: no new step starts, the running ones finish, the
 *      completed ones are compensated in reverse order;
 *   6. the end state (or, level 3, the pause) is written, the locks are
 *      released, and the summary is returned.
 * Only the calling thread touches the store and the progress callback; step
 * threads only call the connectors and build their own result objects.
 */
#include "pipeline/execute.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "bot/log.h"
#include "bot/util.h"

#define EXEC_MAX_STEPS 500
#define EXEC_RETRIES_MAX 5
#define EXEC_DEFAULT_TIMEOUT_S 30
#define EXEC_READ_ESTIMATE_MAX_S 5
/* In-process lock waits poll this often and keep their place in line for
 * EXEC_WAIT_TTL_MS after their last poll (then a crashed waiter's place is
 * given up). */
#define EXEC_LOCK_POLL_MS 500
#define EXEC_WAIT_TTL_MS 15000
/* A background job whose assets are busy is offered again after this. */
#define EXEC_JOB_RETRY_MS 2000
/* bt_execute_worker_once runs recovery at most this often. */
#define EXEC_RECOVER_EVERY_MS 10000
/* A write that records what a run did or is about to do is tried again for
 * this long while the store is away for a moment (a database restart or
 * failover, a lock held elsewhere), waiting EXEC_STORE_RETRY_FIRST_MS at
 * first and at most EXEC_STORE_RETRY_MAX_MS between tries. */
#define EXEC_STORE_RETRY_MS 30000
#define EXEC_STORE_RETRY_FIRST_MS 100
#define EXEC_STORE_RETRY_MAX_MS 2000
#define EXEC_TEXT_SHOWN 60
#define EXEC_ACTOR_WORKER "baton-worker"

/* ---- the state tables ------------------------------------------------------ */

enum xs {
    XS_PENDING_APPROVAL,
    XS_APPROVED,
    XS_QUEUED,
    XS_RUNNING,
    XS_COMPLETED,
    XS_FAILED,
    XS_CANCELLED,
    XS_TIMED_OUT,
    XS_INTERRUPTED,
    XS__COUNT
};
static const char *const xs_names[XS__COUNT] = {
    "pending_approval", "approved",  "queued",    "running",     "completed",
    "failed",           "cancelled", "timed_out", "interrupted",
};

enum ss {
    SS_PENDING,
    SS_RUNNING,
    SS_COMPLETED,
    SS_FAILED,
    SS_SKIPPED,
    SS_CANCELLED,
    SS_TIMED_OUT,
    SS_INTERRUPTED,
    SS_COMPENSATED,
    SS__COUNT
};
static const char *const ss_names[SS__COUNT] = {
    "pending",   "running",   "completed",   "failed",      "skipped",
    "cancelled", "timed_out", "interrupted", "compensated",
};

#define BIT(s) (1u << (s))

/* Which state may follow which. Anything not here is refused. */
static const unsigned xs_next[XS__COUNT] = {
    [XS_PENDING_APPROVAL] =
        BIT(XS_APPROVED) | BIT(XS_RUNNING) | BIT(XS_QUEUED) | BIT(XS_CANCELLED) | BIT(XS_TIMED_OUT),
    [XS_APPROVED] = BIT(XS_QUEUED) | BIT(XS_RUNNING) | BIT(XS_CANCELLED) | BIT(XS_TIMED_OUT),
    [XS_QUEUED] = BIT(XS_RUNNING) | BIT(XS_CANCELLED) | BIT(XS_TIMED_OUT) | BIT(XS_INTERRUPTED),
    [XS_RUNNING] = BIT(XS_COMPLETED) | BIT(XS_FAILED) | BIT(XS_CANCELLED) | BIT(XS_TIMED_OUT) |
                   BIT(XS_INTERRUPTED) | BIT(XS_PENDING_APPROVAL) | BIT(XS_QUEUED),
};
static const unsigned ss_next[SS__COUNT] = {
    [SS_PENDING] = BIT(SS_RUNNING) | BIT(SS_SKIPPED) | BIT(SS_CANCELLED),
    [SS_RUNNING] = BIT(SS_COMPLETED) | BIT(SS_FAILED) | BIT(SS_TIMED_OUT) | BIT(SS_INTERRUPTED),
    [SS_COMPLETED] = BIT(SS_COMPENSATED),
};

static int state_index(const char *name, const char *const *names, int count)
{
    for (int i = 0; name && i < count; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

bool bt_execute_transition_ok(bool step, const char *from, const char *to)
{
    const char *const *names = step ? ss_names : xs_names;
    int count = step ? SS__COUNT : XS__COUNT;
    int f = state_index(from, names, count), t = state_index(to, names, count);
    if (f < 0 || t < 0)
        return false;
    return ((step ? ss_next : xs_next)[f] & BIT(t)) != 0;
}

/* ---- configuration -------------------------------------------------------------- */

static const struct {
    const char *key; /* under execution: ("breaker.failures" for the nested ones) */
    size_t offset;
    int min, max, def;
} int_keys[] = {
    {"parallel", offsetof(struct bt_execute_config, parallel), 1, 32, 4},
    {"background_after_s", offsetof(struct bt_execute_config, background_after_s), 1, 86400, 30},
    {"background_targets", offsetof(struct bt_execute_config, background_targets), 1, 10000, 10},
    {"retry_base_ms", offsetof(struct bt_execute_config, retry_base_ms), 1, 60000, 500},
    {"retry_max_ms", offsetof(struct bt_execute_config, retry_max_ms), 1, 600000, 10000},
    {"breaker.failures", offsetof(struct bt_execute_config, breaker_failures), 1, 1000, 5},
    {"breaker.cooldown_s", offsetof(struct bt_execute_config, breaker_cooldown_s), 1, 3600, 30},
    {"lock_wait_s", offsetof(struct bt_execute_config, lock_wait_s), 1, 86400, 300},
    {"job_lease_s", offsetof(struct bt_execute_config, job_lease_s), 1, 3600, 60},
    {"job_attempts", offsetof(struct bt_execute_config, job_attempts), 1, 100, 3},
};
#define INT_KEYS (sizeof int_keys / sizeof int_keys[0])

static int *conf_field(struct bt_execute_config *c, size_t offset)
{
    return (int *)((char *)c + offset);
}

static void conf_defaults(struct bt_execute_config *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < INT_KEYS; i++)
        *conf_field(c, int_keys[i].offset) = int_keys[i].def;
    c->asset_lock = BT_EXECUTE_LOCK_QUEUE;
}

static void conf_problem(bt_diag *d, const bt_yaml_doc *doc, const json_t *obj, const char *key,
                         const char *name, const char *msg)
{
    char full[128];
    bt_fmt(full, sizeof full, "execution.%s", name);
    bt_diag_add(d, bt_yaml_name(doc), bt_yaml_key_line(doc, obj, key), full, "%s", msg);
}

bool bt_execute_config_read(const bt_config *cfg, struct bt_execute_config *out, bt_diag *d)
{
    conf_defaults(out);
    const bt_yaml_doc *doc = bt_config_main(cfg);
    const json_t *sec = cfg ? bt_config_get(cfg, "execution") : NULL;
    if (!sec || json_is_null(sec))
        return true;
    size_t before = bt_diag_count(d);
    if (!json_is_object(sec)) {
        bt_diag_add(d, bt_yaml_name(doc), bt_yaml_line(doc, sec), "execution",
                    "must be a mapping (parallel, background_after_s, asset_lock, ...)");
        return false;
    }
    static const char *const top[] = {
        "parallel", "background_after_s", "background_targets", "retry_base_ms", "retry_max_ms",
        "breaker",  "asset_lock",         "lock_wait_s",        "job_lease_s",   "job_attempts",
        NULL};
    static const char *const nested[] = {"failures", "cooldown_s", NULL};
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)sec, key, v)
    {
        bool known = false;
        for (size_t i = 0; top[i]; i++)
            known = known || strcmp(top[i], key) == 0;
        if (!known)
            conf_problem(d, doc, sec, key, key, "unknown key");
    }
    const json_t *breaker = json_object_get(sec, "breaker");
    if (breaker && !json_is_object(breaker)) {
        conf_problem(d, doc, sec, "breaker", "breaker",
                     "must be a mapping with failures and cooldown_s");
        breaker = NULL;
    }
    json_object_foreach((json_t *)breaker, key, v)
    {
        bool known = false;
        for (size_t i = 0; nested[i]; i++)
            known = known || strcmp(nested[i], key) == 0;
        if (!known) {
            char name[96];
            bt_fmt(name, sizeof name, "breaker.%s", key);
            conf_problem(d, doc, breaker, key, name, "unknown key");
        }
    }
    for (size_t i = 0; i < INT_KEYS; i++) {
        const char *name = int_keys[i].key;
        const json_t *obj = sec;
        const char *leaf = name;
        if (strncmp(name, "breaker.", 8) == 0) {
            obj = breaker;
            leaf = name + 8;
        }
        const json_t *val = obj ? json_object_get(obj, leaf) : NULL;
        if (!val)
            continue;
        if (!json_is_integer(val) || json_integer_value(val) < int_keys[i].min ||
            json_integer_value(val) > int_keys[i].max) {
            char msg[128];
            bt_fmt(msg, sizeof msg, "must be a whole number from %d to %d", int_keys[i].min,
                   int_keys[i].max);
            conf_problem(d, doc, obj, leaf, name, msg);
            continue;
        }
        *conf_field(out, int_keys[i].offset) = (int)json_integer_value(val);
    }
    if (out->retry_max_ms < out->retry_base_ms) {
        conf_problem(d, doc, sec, "retry_max_ms", "retry_max_ms",
                     "must not be below retry_base_ms");
        out->retry_max_ms = out->retry_base_ms;
    }
    const json_t *mode = json_object_get(sec, "asset_lock");
    if (mode) {
        const char *m = json_string_value(mode);
        if (m && strcmp(m, "queue") == 0)
            out->asset_lock = BT_EXECUTE_LOCK_QUEUE;
        else if (m && strcmp(m, "refuse") == 0)
            out->asset_lock = BT_EXECUTE_LOCK_REFUSE;
        else
            conf_problem(d, doc, sec, "asset_lock", "asset_lock",
                         "must be queue (wait in line) or refuse (end at once, naming the "
                         "holder)");
    }
    return bt_diag_count(d) == before;
}

/* ---- who we are (owner of running executions) --------------------------------------- */

struct owner {
    char host[256];
    long long pid;
    char start[128]; /* "<boot id>:<start time in clock ticks>", "" when unknown */
};

/* The boot id and the start time of pid, as "<boot id>:<ticks>". Returns
 * 1 when read, 0 when the process is gone or a zombie, -1 when it cannot
 * be told (no /proc). */
static int proc_start(long long pid, char *out, size_t outlen)
{
    char path[64], err[BT_ERRLEN];
    char *text = NULL;
    bt_fmt(path, sizeof path, "/proc/%lld/stat", pid);
    enum bt_err e = bt_read_file(path, 4096, &text, NULL, err, sizeof err);
    if (e == BT_ENOENT)
        return 0;
    if (e != BT_OK)
        return -1;
    /* Fields after the command name, which is in parentheses and may hold
     * anything: state is field 3, starttime field 22. */
    const char *p = strrchr(text, ')');
    int rc = -1;
    if (p && p[1] == ' ') {
        p += 2;
        char state = *p;
        for (int field = 3; field < 22 && p; field++) {
            p = strchr(p, ' ');
            if (p)
                p++;
        }
        if (state == 'Z' || state == 'X') {
            rc = 0;
        } else if (p) {
            size_t n = strcspn(p, " \n");
            char *boot = NULL;
            size_t blen = 0;
            if (bt_read_file("/proc/sys/kernel/random/boot_id", 256, &boot, &blen, err,
                             sizeof err) != BT_OK)
                boot = NULL;
            while (boot && blen && (boot[blen - 1] == '\n' || boot[blen - 1] == ' '))
                boot[--blen] = '\0';
            bt_fmt(out, outlen, "%s:%.*s", boot && *boot ? boot : "-", (int)n, p);
            free(boot);
            rc = 1;
        }
    }
    free(text);
    return rc;
}

static void owner_self(struct owner *o)
{
    memset(o, 0, sizeof *o);
    if (gethostname(o->host, sizeof o->host - 1) != 0 || !o->host[0])
        bt_strlcpy(o->host, "localhost", sizeof o->host);
    o->pid = (long long)getpid();
    if (proc_start(o->pid, o->start, sizeof o->start) != 1)
        o->start[0] = '\0';
}

/* Is the process that owns an execution still there? Only answerable on
 * the same host; anything else counts as alive, so it is never touched. */
static bool owner_alive(const struct owner *self, const char *host, long long pid,
                        const char *start)
{
    if (!host || strcmp(host, self->host) != 0 || pid <= 0 || pid > INT_MAX)
        return true;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        return false;
    char now[128];
    int r = proc_start(pid, now, sizeof now);
    if (r == 0)
        return false;
    if (r < 0 || !start || !*start)
        return true;
    /* Same pid, another process (pid reused, or another boot). */
    return strcmp(now, start) == 0;
}

/* ---- the engine ------------------------------------------------------------------- */

struct bt_execute {
    struct bt_execute_config conf;
    bt_connectors *conns;
    const bt_tools *tools;
    bt_store *st;
    bt_execute_progress_fn progress;
    void *progress_ctx;
    struct owner self;
    char worker[400];
    int64_t last_recover_ms; /* monotonic; 0 = never */
    /* The background job being run, for heartbeats (0: none). */
    long long job_id;
    int64_t job_beat_ms;
    /* A write gave up waiting for the store (store_retry): until one
     * succeeds, later writes try once, so a long outage costs a run one
     * wait, not one per write. */
    bool store_away;
};

bt_execute *bt_execute_new(const struct bt_execute_config *conf, bt_connectors *conns,
                           const bt_tools *tools, bt_store *st, bt_execute_progress_fn progress,
                           void *progress_ctx)
{
    bt_execute *ex = bt_calloc(1, sizeof *ex);
    if (conf) {
        ex->conf = *conf;
        bt_connectors_set_breaker(conns, conf->breaker_failures, conf->breaker_cooldown_s);
    } else {
        conf_defaults(&ex->conf);
    }
    ex->conns = conns;
    ex->tools = tools;
    ex->st = st;
    ex->progress = progress;
    ex->progress_ctx = progress_ctx;
    owner_self(&ex->self);
    char rnd[33];
    bt_random_id(rnd);
    bt_fmt(ex->worker, sizeof ex->worker, "%s:%lld:%.8s", ex->self.host, ex->self.pid, rnd);
    return ex;
}

void bt_execute_free(bt_execute *ex)
{
    free(ex);
}

static void sleep_ms(int64_t ms);
static void heartbeat(bt_execute *ex, bool force);

/* Whether to try a store write again after it failed with e: only when the
 * same call may well work a moment later (the store was unavailable, or a
 * lock or statement timed out), and only until EXEC_STORE_RETRY_MS have
 * passed since `since` (monotonic), and not at all after a write of ex
 * gave up until one succeeds (store_ok). Waits before saying yes, keeping
 * the lease of ex's background job meanwhile (ex may be NULL). *round
 * counts the tries (start at 0).
 *
 * Why: a write the engine skips leaves the store behind reality, e.g. a
 * step that ended still shown "running" under an execution that went on to
 * completed, or a step_finished missing from the audit log. A database
 * restart takes seconds; the store's own reconnect gives up after 5 s.
 * The price is rare: when a connection broke while COMMIT was on its way
 * the first write may have landed, so an audit entry can then appear twice
 * (state writes are idempotent, and xmove checks). */
static bool store_retry(bt_execute *ex, enum bt_err e, int64_t since, int *round,
                        const char *request_id, const char *what, const char *err)
{
    if (e != BT_EUNAVAIL && e != BT_ETIMEOUT)
        return false;
    if (ex && ex->store_away)
        return false;
    int64_t left = EXEC_STORE_RETRY_MS - (bt_mono_ms() - since);
    if (left <= 0) {
        if (ex)
            ex->store_away = true;
        return false;
    }
    if (*round == 0)
        bt_log(BT_LOG_WARN, "execute", request_id, "%s: %s; trying again for up to %lld ms", what,
               err, (long long)left);
    int64_t wait = EXEC_STORE_RETRY_FIRST_MS;
    for (int i = 0; i < *round && wait < EXEC_STORE_RETRY_MAX_MS; i++)
        wait *= 2;
    if (wait > EXEC_STORE_RETRY_MAX_MS)
        wait = EXEC_STORE_RETRY_MAX_MS;
    (*round)++;
    sleep_ms(wait < left ? wait : left);
    if (ex)
        heartbeat(ex, false);
    return true;
}

/* A write succeeded: the store is back. */
static void store_ok(bt_execute *ex)
{
    if (ex)
        ex->store_away = false;
}

/* Append to the audit log; a store that is away for a moment is waited
 * for (store_retry), so what ran is on record. ex may be NULL. Steals
 * detail. */
static void audit_ex(bt_execute *ex, bt_store *st, const char *request_id, const char *actor,
                     const char *event, json_t *detail)
{
    char err[BT_ERRLEN];
    int64_t since = bt_mono_ms();
    int round = 0;
    enum bt_err e;
    while ((e = bt_store_audit_append(st, request_id && *request_id ? request_id : NULL, actor,
                                      event, detail, err, sizeof err)) != BT_OK &&
           store_retry(ex, e, since, &round, request_id, "audit log", err))
        ;
    if (e == BT_OK)
        store_ok(ex);
    else
        bt_log(BT_LOG_ERROR, "execute", request_id, "audit log: %s", err);
    json_decref(detail);
}

static void audit(bt_store *st, const char *request_id, const char *actor, const char *event,
                  json_t *detail)
{
    audit_ex(NULL, st, request_id, actor, event, detail);
}

/* Keep a background job's lease while a run goes on (calling thread). */
static void heartbeat(bt_execute *ex, bool force)
{
    if (!ex->job_id)
        return;
    int64_t now = bt_mono_ms();
    int64_t every = (int64_t)ex->conf.job_lease_s * 1000 / 3;
    if (!force && now - ex->job_beat_ms < every)
        return;
    char err[BT_ERRLEN];
    if (bt_store_job_heartbeat(ex->st, ex->job_id, ex->worker, err, sizeof err) != BT_OK)
        bt_log(BT_LOG_WARN, "execute", NULL, "job %lld: heartbeat: %s", ex->job_id, err);
    ex->job_beat_ms = now;
}

static int64_t beat_every_ms(const bt_execute *ex)
{
    int64_t every = ex->job_id ? (int64_t)ex->conf.job_lease_s * 1000 / 3 : 1000;
    return every < 100 ? 100 : every;
}

/* ---- one step's call, on its own thread -------------------------------------------- */

struct sched;

struct task {
    /* in: borrowed, read-only while the thread runs */
    bt_connectors *conns;
    const json_t *tool;
    const json_t *inputs;
    const json_t *target;
    int retries;
    bool read_only;
    int base_ms, max_ms;
    uint64_t rng;
    /* out: built by the thread, handed over at join */
    json_t *result;
    json_t *retried; /* [{attempt, error, backoff_ms}] */
    enum bt_err rc;
    char err[BT_ERRLEN];
    int attempts;
    int64_t ms;
    /* bookkeeping */
    size_t index;
    pthread_t thread;
    bool threaded;
    struct sched *sched;
};

/* Finished tasks, handed from step threads to the calling thread. */
struct sched {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct task **finished;
    size_t nfinished;
    /* Run tasks on the calling thread: nothing could run beside them and
     * no lease needs heartbeating meanwhile, so a thread buys nothing. */
    bool inline_tasks;
};

static void sched_init(struct sched *s, size_t cap)
{
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &a);
    pthread_condattr_destroy(&a);
    s->finished = bt_calloc(cap ? cap : 1, sizeof *s->finished);
    s->nfinished = 0;
    s->inline_tasks = false;
}

static void sched_destroy(struct sched *s)
{
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s->finished);
}

static uint64_t rng_next(uint64_t *x)
{
    /* splitmix64: a per-task generator, so threads share no state. */
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rng_seed(void)
{
    char id[33];
    bt_random_id(id);
    uint64_t s = 0;
    for (int i = 0; i < 16; i++)
        s = s * 16 + (uint64_t)(id[i] <= '9' ? id[i] - '0' : id[i] - 'a' + 10);
    return s;
}

static void sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Transient: the call did not get through (BT_EUNAVAIL), or it timed out
 * and the tool only reads. A change that may have started is never
 * retried. */
static bool transient(enum bt_err rc, bool read_only)
{
    return rc == BT_EUNAVAIL || (read_only && rc == BT_ETIMEOUT);
}

/* Exponential backoff with full jitter: uniform in [0, min(max, base *
 * 2^(attempt-1))]. */
static int64_t backoff_ms(struct task *t, int attempt)
{
    int64_t cap = t->base_ms;
    for (int i = 1; i < attempt && cap < t->max_ms; i++)
        cap *= 2;
    if (cap > t->max_ms)
        cap = t->max_ms;
    return (int64_t)(rng_next(&t->rng) % (uint64_t)(cap + 1));
}

static void task_run(struct task *t)
{
    int64_t t0 = bt_mono_ms();
    t->retried = json_array();
    for (int attempt = 1;; attempt++) {
        t->attempts = attempt;
        t->err[0] = '\0';
        t->rc = bt_connectors_invoke(t->conns, t->tool, t->inputs, t->target, &t->result, t->err,
                                     sizeof t->err);
        if (t->rc == BT_OK || attempt > t->retries || !transient(t->rc, t->read_only))
            break;
        int64_t wait = backoff_ms(t, attempt);
        json_array_append_new(t->retried, json_pack("{s:i, s:s, s:I}", "attempt", attempt, "error",
                                                    t->err[0] ? t->err : bt_strerror(t->rc),
                                                    "backoff_ms", (json_int_t)wait));
        json_decref(t->result);
        t->result = NULL;
        sleep_ms(wait);
    }
    t->ms = bt_mono_ms() - t0;
}

static void *task_thread(void *arg)
{
    struct task *t = arg;
    task_run(t);
    pthread_mutex_lock(&t->sched->mu);
    t->sched->finished[t->sched->nfinished++] = t;
    pthread_cond_signal(&t->sched->cv);
    pthread_mutex_unlock(&t->sched->mu);
    return NULL;
}

/* Start t on a thread (inline if no thread can be had). */
static void task_start(struct task *t, struct sched *s)
{
    t->sched = s;
    t->threaded = !s->inline_tasks && pthread_create(&t->thread, NULL, task_thread, t) == 0;
    if (!t->threaded)
        task_thread(t);
}

/* Wait for the next finished task, heartbeating a background job's lease
 * meanwhile; joins its thread. */
static struct task *sched_next(bt_execute *ex, struct sched *s)
{
    pthread_mutex_lock(&s->mu);
    while (s->nfinished == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t every = beat_every_ms(ex);
        ts.tv_sec += (time_t)(every / 1000);
        ts.tv_nsec += (long)(every % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT) {
            pthread_mutex_unlock(&s->mu);
            heartbeat(ex, false);
            pthread_mutex_lock(&s->mu);
        }
    }
    struct task *t = s->finished[--s->nfinished];
    pthread_mutex_unlock(&s->mu);
    if (t->threaded)
        pthread_join(t->thread, NULL);
    return t;
}

static int tool_retries(const json_t *tool, bool read_only)
{
    json_t *r = json_object_get(tool, "retries");
    long long n = json_is_integer(r) ? json_integer_value(r) : (read_only ? 2 : 0);
    if (n < 0)
        n = 0;
    return n > EXEC_RETRIES_MAX ? EXEC_RETRIES_MAX : (int)n;
}

/* The result a user sees for a step: connector data, how long, how many
 * attempts, what was retried, and the error text. Takes t's objects. */
static json_t *task_result(struct task *t)
{
    json_t *r = json_is_object(t->result) ? t->result : json_object();
    if (t->result && !json_is_object(t->result))
        json_object_set_new(r, "data", t->result);
    t->result = NULL;
    json_object_set_new(r, "duration_ms", json_integer(t->ms));
    json_object_set_new(r, "attempts", json_integer(t->attempts));
    if (json_array_size(t->retried))
        json_object_set_new(r, "retried", t->retried);
    else
        json_decref(t->retried);
    t->retried = NULL;
    if (t->rc != BT_OK)
        json_object_set_new(r, "error", json_string(t->err[0] ? t->err : bt_strerror(t->rc)));
    return r;
}

/* ---- one run --------------------------------------------------------------------------- */

struct run {
    bt_execute *ex;
    const char *id;
    const char *actor;
    json_t *exe;        /* bt_store_execution_get */
    json_t *stored;     /* bt_store_plan_get */
    const json_t *plan; /* borrowed from stored */
    const json_t *steps;
    size_t n;
    const char *request_id;
    int xstate;      /* the execution's state as last written */
    enum ss *state;  /* per step */
    json_t **result; /* per step (owned) */
    json_t *targets; /* asset name -> asset object */
    json_t *compensated;
    json_t *queue; /* the last lock-wait report */
    int done;
    bool failed;
    int only; /* -1: the whole plan */
    const json_t *job;
    bool requeue; /* background job: assets busy, offer it again */
};

static const json_t *step_at(const struct run *r, size_t i)
{
    return json_array_get(r->steps, i);
}

static const char *step_str(const json_t *step, const char *key)
{
    return json_string_value(json_object_get(step, key));
}

static void run_free(struct run *r)
{
    for (size_t i = 0; r->result && i < r->n; i++)
        json_decref(r->result[i]);
    free(r->result);
    free(r->state);
    json_decref(r->exe);
    json_decref(r->stored);
    json_decref(r->targets);
    json_decref(r->compensated);
    json_decref(r->queue);
}

static bool ended(enum ss s)
{
    return s != SS_PENDING && s != SS_RUNNING;
}

static void count_done(struct run *r)
{
    r->done = 0;
    for (size_t i = 0; i < r->n; i++)
        if (ended(r->state[i]))
            r->done++;
}

static void notify_progress(struct run *r, int index, const char *state, const char *message)
{
    bt_execute *ex = r->ex;
    if (!ex->progress)
        return;
    const json_t *step = index >= 0 ? step_at(r, (size_t)index) : NULL;
    struct bt_execute_progress p = {
        .execution_id = r->id,
        .index = index,
        .tool = step ? step_str(step, "tool") : NULL,
        .target = step ? step_str(step, "target") : NULL,
        .state = state,
        .done = r->done,
        .total = (int)r->n,
        .message = message,
    };
    ex->progress(ex->progress_ctx, &p);
}

/* The summary object of execute.h. */
static json_t *summary(struct run *r)
{
    json_t *steps = json_array();
    for (size_t i = 0; i < r->n; i++) {
        const json_t *step = step_at(r, i);
        json_array_append_new(steps, json_pack("{s:I, s:O, s:O?, s:s, s:O?}", "index",
                                               (json_int_t)i, "tool", json_object_get(step, "tool"),
                                               "target", json_object_get(step, "target"), "state",
                                               ss_names[r->state[i]], "result", r->result[i]));
    }
    json_t *o = json_pack("{s:s, s:s, s:o, s:O, s:{s:i, s:i}, s:i}", "execution_id", r->id, "state",
                          xs_names[r->xstate], "steps", steps, "compensated", r->compensated,
                          "progress", "done", r->done, "total", (int)r->n, "estimate_s",
                          bt_execute_estimate_s(r->ex, r->plan, r->only));
    if (r->queue)
        json_object_set(o, "queue", r->queue);
    return o;
}

/* A summary for a run that could not even load its execution. */
static json_t *fail_early(const char *execution_id, const char *state, const char *error,
                          const char *message)
{
    return json_pack("{s:s, s:s?, s:s, s:s, s:[], s:[]}", "execution_id",
                     execution_id ? execution_id : "", "state", state, "error", error, "message",
                     message, "steps", "compensated");
}

static json_t *fail_run(struct run *r, const char *error, const char *message)
{
    json_t *o = summary(r);
    json_object_set_new(o, "error", json_string(error));
    json_object_set_new(o, "message", json_string(message));
    return o;
}

/* Move the execution to state `to` in the store (compare-and-set from the
 * state it was last seen in), checked against the table first. */
static enum bt_err xmove(struct run *r, int to, const json_t *result, char *err, size_t errlen)
{
    if (!(xs_next[r->xstate] & BIT(to))) {
        bt_fmt(err, errlen, "execution %s cannot go from %s to %s", r->id, xs_names[r->xstate],
               xs_names[to]);
        return BT_EINVAL;
    }
    int64_t since = bt_mono_ms();
    int round = 0;
    enum bt_err e;
    while ((e = bt_store_execution_transition(r->ex->st, r->id, xs_names[r->xstate], xs_names[to],
                                              result, err, errlen)) != BT_OK &&
           store_retry(r->ex, e, since, &round, r->request_id, "execution state", err))
        ;
    if (e == BT_ENOENT && round > 0) {
        /* A try whose COMMIT was under way when the connection broke may
         * have made the move already. */
        json_t *x = NULL;
        char ignored[BT_ERRLEN];
        if (bt_store_execution_get(r->ex->st, r->id, &x, ignored, sizeof ignored) == BT_OK &&
            strcmp(step_str(x, "state") ? step_str(x, "state") : "", xs_names[to]) == 0)
            e = BT_OK;
        json_decref(x);
    }
    if (e == BT_OK) {
        store_ok(r->ex);
        r->xstate = to;
    }
    return e;
}

/* Move step i, checked against the table; result may be NULL (keep). */
static enum bt_err smove(struct run *r, size_t i, enum ss to, const json_t *result)
{
    char err[BT_ERRLEN];
    if (!(ss_next[r->state[i]] & BIT(to))) {
        bt_log(BT_LOG_ERROR, "execute", r->request_id, "execution %s step %zu: %s -> %s refused",
               r->id, i, ss_names[r->state[i]], ss_names[to]);
        return BT_EINVAL;
    }
    int64_t since = bt_mono_ms();
    int round = 0;
    enum bt_err e;
    while ((e = bt_store_step_set(r->ex->st, r->id, (int)i, ss_names[to], result, err,
                                  sizeof err)) != BT_OK &&
           store_retry(r->ex, e, since, &round, r->request_id, "step state", err))
        ;
    if (e == BT_OK)
        store_ok(r->ex);
    if (e != BT_OK) {
        bt_log(BT_LOG_ERROR, "execute", r->request_id, "execution %s step %zu: %s", r->id, i, err);
        return e;
    }
    r->state[i] = to;
    return BT_OK;
}

static void store_progress(struct run *r)
{
    char err[BT_ERRLEN];
    count_done(r);
    if (bt_store_execution_progress(r->ex->st, r->id, r->done, (int)r->n, err, sizeof err) != BT_OK)
        bt_log(BT_LOG_WARN, "execute", r->request_id, "progress: %s", err);
}

/* The inventory entry a step acts on (borrowed from r->targets), or NULL. */
static const json_t *target_of(struct run *r, const json_t *step)
{
    const char *name = step_str(step, "target");
    if (!name)
        return NULL;
    json_t *a = json_object_get(r->targets, name);
    if (a)
        return json_is_object(a) ? a : NULL;
    json_t *filter = json_pack("{s:s}", "host", name);
    json_t *found = NULL;
    char err[BT_ERRLEN];
    json_t *pick = json_null();
    if (bt_store_assets_query(r->ex->st, filter, &found, err, sizeof err) == BT_OK) {
        size_t i;
        json_t *x;
        json_array_foreach(found, i, x)
        {
            const char *n = step_str(x, "name");
            if (n && strcasecmp(n, name) == 0) {
                json_decref(pick);
                pick = json_incref(x);
                break;
            }
        }
    }
    json_decref(found);
    json_decref(filter);
    json_object_set_new(r->targets, name, pick);
    return json_is_object(pick) ? pick : NULL;
}

/* Load the execution, its plan and its steps' states. On failure returns a
 * summary to hand back (and r is freed). */
static json_t *run_load(bt_execute *ex, const char *id, const char *actor, struct run *r)
{
    memset(r, 0, sizeof *r);
    r->ex = ex;
    r->id = id;
    r->actor = actor ? actor : "baton";
    r->only = -1;
    r->compensated = json_array();
    r->targets = json_object();
    char err[BT_ERRLEN];
    enum bt_err e = bt_store_execution_get(ex->st, id, &r->exe, err, sizeof err);
    if (e != BT_OK) {
        run_free(r);
        return fail_early(id, NULL, e == BT_ENOENT ? "not_found" : "store", err);
    }
    r->xstate = state_index(step_str(r->exe, "state"), xs_names, XS__COUNT);
    e = bt_store_plan_get(ex->st, step_str(r->exe, "plan_id"), &r->stored, err, sizeof err);
    if (e != BT_OK || r->xstate < 0) {
        json_t *o = fail_early(id, step_str(r->exe, "state"), "store",
                               e != BT_OK ? err : "the execution is in an unknown state");
        run_free(r);
        return o;
    }
    r->plan = json_object_get(r->stored, "plan");
    r->steps = json_object_get(r->plan, "steps");
    r->n = json_array_size(r->steps);
    r->request_id = step_str(r->stored, "request_id");
    if (r->n == 0 || r->n > EXEC_MAX_STEPS) {
        json_t *o = fail_early(id, step_str(r->exe, "state"), "invalid_step",
                               r->n ? "the plan has too many steps" : "the plan has no steps");
        run_free(r);
        return o;
    }
    r->state = bt_calloc(r->n, sizeof *r->state);
    r->result = bt_calloc(r->n, sizeof *r->result);
    size_t k;
    json_t *row;
    json_array_foreach(json_object_get(r->exe, "steps"), k, row)
    {
        json_int_t i = json_integer_value(json_object_get(row, "index"));
        int s = state_index(step_str(row, "state"), ss_names, SS__COUNT);
        if (i < 0 || (size_t)i >= r->n || s < 0)
            continue;
        r->state[i] = (enum ss)s;
        json_t *res = json_object_get(row, "result");
        if (res && !json_is_null(res))
            r->result[i] = json_incref(res);
    }
    count_done(r);
    return NULL;
}

/* Create the rows of steps that have none yet (first run, or a crash while
 * they were being created). */
static enum bt_err ensure_rows(struct run *r, char *err, size_t errlen)
{
    size_t have = json_array_size(json_object_get(r->exe, "steps"));
    if (have >= r->n)
        return BT_OK;
    bool *exists = bt_calloc(r->n, sizeof *exists);
    size_t k;
    json_t *row;
    json_array_foreach(json_object_get(r->exe, "steps"), k, row)
    {
        json_int_t i = json_integer_value(json_object_get(row, "index"));
        if (i >= 0 && (size_t)i < r->n)
            exists[i] = true;
    }
    enum bt_err e = BT_OK;
    for (size_t i = 0; i < r->n && e == BT_OK; i++) {
        if (exists[i])
            continue;
        const char *tool = step_str(step_at(r, i), "tool");
        e = bt_store_step_add(r->ex->st, r->id, (int)i, tool ? tool : "(none)", "pending", err,
                              errlen);
    }
    free(exists);
    return e;
}

static bool deps_completed(const struct run *r, size_t i, size_t *blocker)
{
    size_t k;
    json_t *d;
    json_array_foreach(json_object_get(step_at(r, i), "depends_on"), k, d)
    {
        json_int_t j = json_integer_value(d);
        if (j < 0 || (size_t)j >= r->n || j == (json_int_t)i)
            continue;
        if (r->state[j] != SS_COMPLETED) {
            if (blocker)
                *blocker = (size_t)j;
            return false;
        }
    }
    return true;
}

/* Distinct names (lowercase) of the targets of the selected steps; only
 * changing steps when changing_only. New array. */
static json_t *targets_of(const struct run *r, bool changing_only)
{
    json_t *seen = json_object();
    json_t *out = json_array();
    for (size_t i = 0; i < r->n; i++) {
        const json_t *step = step_at(r, i);
        if (r->only >= 0 && !changing_only && (size_t)r->only != i)
            continue;
        if (changing_only && json_is_true(json_object_get(step, "read_only")))
            continue;
        const char *t = step_str(step, "target");
        if (!t || !*t)
            continue;
        char *low = bt_lower(t);
        if (!json_object_get(seen, low)) {
            json_object_set_new(seen, low, json_true());
            json_array_append_new(out, json_string(low));
        }
        free(low);
    }
    json_decref(seen);
    return out;
}

/* ---- estimates ------------------------------------------------------------------------- */

static int step_estimate(const bt_execute *ex, const json_t *step)
{
    const json_t *tool = bt_tools_get(ex->tools, step_str(step, "tool"));
    json_t *est = json_object_get(tool, "estimate_s");
    if (json_is_integer(est) && json_integer_value(est) >= 0)
        return json_integer_value(est) > 86400 ? 86400 : (int)json_integer_value(est);
    json_t *to = json_object_get(step, "timeout_s");
    if (!json_is_integer(to))
        to = json_object_get(tool, "timeout_s");
    int timeout = json_is_integer(to) ? (int)json_integer_value(to) : EXEC_DEFAULT_TIMEOUT_S;
    bool ro =
        json_is_true(json_object_get(step, "read_only")) ||
        (!json_object_get(step, "read_only") && json_is_true(json_object_get(tool, "read_only")));
    if (ro && timeout > EXEC_READ_ESTIMATE_MAX_S)
        return EXEC_READ_ESTIMATE_MAX_S;
    return timeout;
}

int bt_execute_estimate_s(const bt_execute *ex, const json_t *plan, int step)
{
    const json_t *steps = json_object_get(plan, "steps");
    size_t n = json_array_size(steps);
    if (n > EXEC_MAX_STEPS)
        n = EXEC_MAX_STEPS;
    if (step >= 0)
        return (size_t)step < n ? step_estimate(ex, json_array_get(steps, (size_t)step)) : 0;
    /* Longest path: dependencies always point at earlier steps (plan.c),
     * so one pass in index order sees every dependency's finish first. */
    long long *finish = bt_calloc(n ? n : 1, sizeof *finish);
    long long best = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *s = json_array_get(steps, i);
        long long start = 0;
        size_t k;
        json_t *d;
        json_array_foreach(json_object_get(s, "depends_on"), k, d)
        {
            json_int_t j = json_integer_value(d);
            if (j >= 0 && (size_t)j < i && finish[j] > start)
                start = finish[j];
        }
        finish[i] = start + step_estimate(ex, s);
        if (finish[i] > best)
            best = finish[i];
    }
    free(finish);
    return best > INT_MAX ? INT_MAX : (int)best;
}

/* ---- locks ------------------------------------------------------------------------------ */

static const char *ordinal_suffix(long long n)
{
    if (n % 100 >= 11 && n % 100 <= 13)
        return "th";
    switch (n % 10) {
    case 1:
        return "st";
    case 2:
        return "nd";
    case 3:
        return "rd";
    default:
        return "th";
    }
}

/* "execution 1a2b3c4d… (alice: restart nginx on web-01)" into b. */
static void describe_holder(bt_buf *b, const json_t *who)
{
    const char *id = step_str(who, "execution_id");
    const char *user = step_str(who, "requester");
    const char *text = step_str(who, "text");
    bt_buf_printf(b, "execution %.8s\xe2\x80\xa6", id ? id : "?");
    if (!user && !text)
        return;
    size_t n = text ? strlen(text) : 0;
    bool cut = n > EXEC_TEXT_SHOWN;
    if (cut) {
        n = EXEC_TEXT_SHOWN;
        while (n > 0 && ((unsigned char)text[n] & 0xc0) == 0x80)
            n--; /* never cut a UTF-8 sequence */
    }
    bt_buf_printf(b, " (%s: %.*s%s)", user ? user : "someone", (int)n, text ? text : "",
                  cut ? "\xe2\x80\xa6" : "");
}

/* The words for a busy answer of bt_store_locks_acquire. New string. */
static char *lock_message(const json_t *res, bool refuse)
{
    const json_t *busy = json_object_get(res, "busy");
    const json_t *b = json_array_get(busy, 0);
    const char *asset = step_str(b, "asset");
    const json_t *holder = json_object_get(b, "holder");
    const json_t *ahead = json_is_object(holder) ? holder : json_object_get(b, "ahead");
    bt_buf m = BT_BUF_INIT(4096);
    if (refuse) {
        bt_buf_printf(&m, "%s is in use by ", asset ? asset : "an asset");
        describe_holder(&m, ahead);
        if (!json_is_object(holder))
            bt_buf_puts(&m, ", which is waiting for it");
        bt_buf_puts(&m, "; nothing was run. Try again when it has finished.");
    } else {
        long long pos = json_integer_value(json_object_get(b, "position"));
        bt_buf_printf(&m, "%lld%s in line for %s behind ", pos, ordinal_suffix(pos),
                      asset ? asset : "an asset");
        describe_holder(&m, ahead);
    }
    if (json_array_size(busy) > 1)
        bt_buf_printf(&m, " (and %zu more asset%s)", json_array_size(busy) - 1,
                      json_array_size(busy) == 2 ? "" : "s");
    return bt_buf_steal(&m);
}

/* Take the locks of every changing target. true: go on. false: *out is the
 * summary to return (refused, gave up, a store failure, or a background job
 * to offer again later). */
static bool take_locks(struct run *r, json_t **out)
{
    bt_execute *ex = r->ex;
    char err[BT_ERRLEN];
    json_t *assets = targets_of(r, true);
    bool ok = false;
    if (json_array_size(assets) == 0) {
        json_decref(assets);
        return true;
    }
    int64_t deadline = bt_mono_ms() + (int64_t)ex->conf.lock_wait_s * 1000;
    char *last = NULL;
    for (;;) {
        json_t *res = NULL;
        if (bt_store_locks_acquire(ex->st, r->id, assets, EXEC_WAIT_TTL_MS, &res, err,
                                   sizeof err) != BT_OK) {
            *out = fail_run(r, "store", err);
            break;
        }
        if (json_is_true(json_object_get(res, "acquired"))) {
            json_decref(res);
            ok = true;
            break;
        }
        bool refuse = ex->conf.asset_lock == BT_EXECUTE_LOCK_REFUSE;
        char *msg = lock_message(res, refuse);
        json_decref(r->queue);
        r->queue = json_incref(json_array_get(json_object_get(res, "busy"), 0));
        json_decref(res);
        if (refuse) {
            bt_store_locks_release(ex->st, r->id, err, sizeof err);
            json_t *o = fail_run(r, "asset_busy", msg);
            json_object_set_new(o, "state", json_string("cancelled"));
            if (xmove(r, XS_CANCELLED, o, err, sizeof err) == BT_OK)
                audit_ex(ex, ex->st, r->request_id, r->actor, "execution_refused",
                         json_pack("{s:s, s:s}", "execution_id", r->id, "reason", msg));
            else
                json_object_set_new(o, "state", json_string(xs_names[r->xstate]));
            notify_progress(r, -1, xs_names[r->xstate], msg);
            free(msg);
            *out = o;
            break;
        }
        if (r->xstate != XS_QUEUED) {
            if (xmove(r, XS_QUEUED, NULL, err, sizeof err) != BT_OK) {
                bt_store_locks_release(ex->st, r->id, err, sizeof err);
                *out = fail_run(r, "store", err);
                free(msg);
                break;
            }
            audit_ex(ex, ex->st, r->request_id, r->actor, "execution_queued",
                     json_pack("{s:s, s:s}", "execution_id", r->id, "reason", msg));
        }
        if (!last || strcmp(last, msg) != 0)
            notify_progress(r, -1, "queued", msg);
        free(last);
        last = msg;
        if (r->job) {
            /* A background job keeps its place in line and is offered
             * again; it never blocks a worker. */
            r->requeue = true;
            *out = fail_run(r, "asset_busy", msg);
            break;
        }
        int64_t left = deadline - bt_mono_ms();
        if (left <= 0) {
            bt_store_locks_release(ex->st, r->id, err, sizeof err);
            char *why = bt_asprintf("gave up after waiting %d s: %s", ex->conf.lock_wait_s, msg);
            json_t *o = fail_run(r, "lock_timeout", why);
            json_object_set_new(o, "state", json_string("timed_out"));
            if (xmove(r, XS_TIMED_OUT, o, err, sizeof err) == BT_OK)
                audit_ex(ex, ex->st, r->request_id, r->actor, "execution_timed_out",
                         json_pack("{s:s, s:s}", "execution_id", r->id, "reason", why));
            else
                json_object_set_new(o, "state", json_string(xs_names[r->xstate]));
            notify_progress(r, -1, xs_names[r->xstate], why);
            free(why);
            *out = o;
            break;
        }
        heartbeat(ex, false);
        sleep_ms(left < EXEC_LOCK_POLL_MS ? left : EXEC_LOCK_POLL_MS);
    }
    free(last);
    json_decref(assets);
    return ok;
}

/* ---- running steps ------------------------------------------------------------------------ */

/* Prepare a task for a call of tool (definition) with inputs on target. */
static void task_init(struct task *t, const bt_execute *ex, const json_t *tool,
                      const json_t *inputs, const json_t *target, bool read_only)
{
    memset(t, 0, sizeof *t);
    t->conns = ex->conns;
    t->tool = tool;
    t->inputs = json_is_object(inputs) ? inputs : NULL;
    t->target = target;
    t->read_only = read_only;
    t->retries = tool_retries(tool, read_only);
    t->base_ms = ex->conf.retry_base_ms;
    t->max_ms = ex->conf.retry_max_ms;
    t->rng = rng_seed();
}

static bool step_read_only(const json_t *step, const json_t *tool)
{
    json_t *ro = json_object_get(step, "read_only");
    return ro ? json_is_true(ro) : json_is_true(json_object_get(tool, "read_only"));
}

/* What the audit log keeps of a step's result (new): everything but the
 * data an inventory read returned (the step's own record keeps that; the
 * audit notes how much there was) and at most AUDIT_OUTPUT_MAX bytes of
 * each output stream, so one large answer cannot swell the log. */
#define AUDIT_OUTPUT_MAX 4096
static json_t *audit_result(const json_t *res)
{
    json_t *a = json_copy((json_t *)res);
    if (!a)
        return json_null();
    json_t *data = json_object_get(a, "data");
    if (json_is_array(data) || json_is_object(data))
        json_object_set_new(a, "data",
                            json_pack("{s:s, s:I}", "omitted",
                                      json_typeof(data) == JSON_ARRAY ? "array" : "object", "items",
                                      (json_int_t)(json_is_array(data) ? json_array_size(data)
                                                                       : json_object_size(data))));
    static const char *const streams[] = {"stdout", "stderr"};
    for (size_t k = 0; k < 2; k++) {
        const char *v = json_string_value(json_object_get(a, streams[k]));
        size_t n = v ? strlen(v) : 0;
        if (n <= AUDIT_OUTPUT_MAX)
            continue;
        n = AUDIT_OUTPUT_MAX;
        while (n > 0 && ((unsigned char)v[n] & 0xC0) == 0x80)
            n--;
        json_object_set_new(a, streams[k], json_stringn(v, n));
        json_object_set_new(a, "audit_truncated", json_true());
    }
    return a;
}

/* Write the end of step t->index and tell everyone. */
static void step_record(struct run *r, struct task *t)
{
    size_t i = t->index;
    enum ss s = t->rc == BT_OK ? SS_COMPLETED : t->rc == BT_ETIMEOUT ? SS_TIMED_OUT : SS_FAILED;
    json_t *res = task_result(t);
    json_decref(r->result[i]);
    r->result[i] = res;
    smove(r, i, s, res);
    r->state[i] = s; /* even if the store refused: this run knows what happened */
    store_progress(r);
    audit_ex(r->ex, r->ex->st, r->request_id, r->actor, "step_finished",
             json_pack("{s:s, s:I, s:s?, s:s?, s:s, s:i, s:o}", "execution_id", r->id, "index",
                       (json_int_t)i, "tool", step_str(step_at(r, i), "tool"), "target",
                       step_str(step_at(r, i), "target"), "state", ss_names[s], "attempts",
                       t->attempts, "result", audit_result(res)));
    notify_progress(r, (int)i, ss_names[s], NULL);
    if (s != SS_COMPLETED)
        r->failed = true;
}

/* Mark step i running (in the store first) and start its thread. false
 * when it could not be started (it is then recorded as failed, or left
 * pending when even that could not be written). */
static bool step_start(struct run *r, size_t i, struct task *t, struct sched *s)
{
    const json_t *step = step_at(r, i);
    const json_t *target = target_of(r, step);
    const json_t *tool = bt_tools_for(r->ex->tools, step_str(step, "tool"), target);
    task_init(t, r->ex, tool, json_object_get(step, "inputs"), target, step_read_only(step, tool));
    t->index = i;
    /* Written before the call: after a crash the store shows the step as
     * running (so it is reported interrupted), never as not started. */
    if (smove(r, i, SS_RUNNING, NULL) != BT_OK) {
        r->failed = true;
        return false;
    }
    notify_progress(r, (int)i, "running", NULL);
    if (!tool) {
        t->rc = BT_EINVAL;
        bt_fmt(t->err, sizeof t->err, "tool '%s' is not in tools.yaml",
               step_str(step, "tool") ? step_str(step, "tool") : "(none)");
        t->retried = json_array();
        step_record(r, t);
        return false;
    }
    task_start(t, s);
    return true;
}

static void run_steps(struct run *r)
{
    struct sched s;
    sched_init(&s, r->n);
    s.inline_tasks = !r->job && (r->n == 1 || r->only >= 0);
    struct task *tasks = bt_calloc(r->n, sizeof *tasks);
    size_t running = 0;
    int parallel = r->ex->conf.parallel > 0 ? r->ex->conf.parallel : 1;
    for (;;) {
        for (size_t i = 0; !r->failed && i < r->n && running < (size_t)parallel; i++) {
            if (r->state[i] != SS_PENDING || (r->only >= 0 && (size_t)r->only != i) ||
                !deps_completed(r, i, NULL))
                continue;
            if (step_start(r, i, &tasks[i], &s))
                running++;
        }
        if (running == 0)
            break;
        struct task *t = sched_next(r->ex, &s);
        running--;
        step_record(r, t);
    }
    free(tasks);
    sched_destroy(&s);
}

/* The saga: compensate every completed step, last first. */
static void compensate(struct run *r)
{
    for (size_t i = r->n; i-- > 0;) {
        if (r->state[i] != SS_COMPLETED)
            continue;
        const json_t *step = step_at(r, i);
        const json_t *comp = json_object_get(step, "compensate");
        const char *cname = step_str(comp, "tool");
        if (!cname)
            continue;
        const json_t *tool = bt_tools_for(r->ex->tools, cname, target_of(r, step));
        audit_ex(r->ex, r->ex->st, r->request_id, r->actor, "compensation_started",
                 json_pack("{s:s, s:I, s:s}", "execution_id", r->id, "undoes", (json_int_t)i,
                           "tool", cname));
        notify_progress(r, (int)i, "compensating", NULL);
        struct task t;
        task_init(&t, r->ex, tool, json_object_get(comp, "inputs"), target_of(r, step),
                  step_read_only(json_null(), tool));
        int64_t started = bt_wall_ms();
        if (!tool) {
            t.rc = BT_EINVAL;
            bt_fmt(t.err, sizeof t.err, "compensating tool '%s' is not in tools.yaml", cname);
            t.retried = json_array();
        } else {
            /* On a thread, so a long undo still heartbeats its job. */
            struct sched s;
            sched_init(&s, 1);
            task_start(&t, &s);
            sched_next(r->ex, &s);
            sched_destroy(&s);
        }
        json_t *res = task_result(&t);
        json_object_set_new(res, "started_ms", json_integer(started));
        const char *st = t.rc == BT_OK ? "completed" : "failed";
        json_t *rec =
            json_pack("{s:I, s:s, s:s?, s:s, s:o}", "undoes", (json_int_t)i, "tool", cname,
                      "target", step_str(step, "target"), "state", st, "result", res);
        if (t.rc == BT_OK && smove(r, i, SS_COMPENSATED, NULL) != BT_OK)
            bt_log(BT_LOG_ERROR, "execute", r->request_id, "execution %s: step %zu undone but %s",
                   r->id, i, "not recorded as compensated");
        audit_ex(r->ex, r->ex->st, r->request_id, r->actor, "step_compensated",
                 json_pack("{s:s, s:O}", "execution_id", r->id, "compensation", rec));
        notify_progress(r, (int)i, t.rc == BT_OK ? "compensated" : "compensation_failed", NULL);
        json_array_append_new(r->compensated, rec);
    }
}

/* The first pending step whose dependencies are complete (the next one a
 * level-3 approver can release), else the first pending one; -1 if none. */
static int next_pending(const struct run *r)
{
    int first = -1;
    for (size_t i = 0; i < r->n; i++) {
        if (r->state[i] != SS_PENDING)
            continue;
        if (deps_completed(r, i, NULL))
            return (int)i;
        if (first < 0)
            first = (int)i;
    }
    return first;
}

/* Steps that will not run now: skipped after a failure. */
static void skip_rest(struct run *r)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->state[i] == SS_PENDING)
            smove(r, i, SS_SKIPPED, NULL);
}

/* End (or pause) the run: state, result, locks, audit. Returns the
 * summary. */
static json_t *run_finish(struct run *r)
{
    char err[BT_ERRLEN];
    bt_execute *ex = r->ex;
    bool pause = !r->failed && r->only >= 0 && next_pending(r) >= 0;
    if (r->failed)
        skip_rest(r);
    store_progress(r);
    int to = pause ? XS_PENDING_APPROVAL : r->failed ? XS_FAILED : XS_COMPLETED;
    json_t *o = summary(r);
    json_object_set_new(o, "state", json_string(xs_names[to]));
    if (pause) {
        json_object_set_new(o, "paused", json_true());
        json_object_set_new(o, "next_step", json_integer(next_pending(r)));
    }
    if (xmove(r, to, o, err, sizeof err) != BT_OK) {
        /* The store still shows it running (and holding its assets): the
         * audit log does not say otherwise. A background job is then left
         * to its lease (bt_execute_worker_once), a run in a process to
         * recovery when that process ends. */
        bt_log(BT_LOG_ERROR, "execute", r->request_id, "execution %s: %s", r->id, err);
        json_object_set_new(o, "state", json_string(xs_names[r->xstate]));
        json_object_set_new(o, "error", json_string("store"));
        json_object_set_new(o, "message", json_string(err));
        notify_progress(r, -1, xs_names[r->xstate], err);
        return o;
    }
    /* A paused level-3 execution keeps its assets until its last step. */
    if (!pause && bt_store_locks_release(ex->st, r->id, err, sizeof err) != BT_OK)
        bt_log(BT_LOG_ERROR, "execute", r->request_id, "execution %s: locks: %s", r->id, err);
    audit_ex(ex, ex->st, r->request_id, r->actor, pause ? "execution_paused" : "execution_finished",
             json_pack("{s:s, s:s, s:i, s:i, s:i}", "execution_id", r->id, "state", xs_names[to],
                       "done", r->done, "total", (int)r->n, "compensations",
                       (int)json_array_size(r->compensated)));
    notify_progress(r, -1, xs_names[to], NULL);
    return o;
}

static bool should_background(struct run *r, enum bt_execute_mode mode, int estimate)
{
    if (mode == BT_EXECUTE_NOW)
        return false;
    if (mode == BT_EXECUTE_BACKGROUND)
        return true;
    json_t *t = targets_of(r, false);
    bool many = json_array_size(t) > (size_t)r->ex->conf.background_targets;
    json_decref(t);
    return many || estimate > r->ex->conf.background_after_s;
}

static json_t *enqueue(struct run *r, int estimate)
{
    char err[BT_ERRLEN];
    bt_execute *ex = r->ex;
    if (r->xstate != XS_QUEUED && xmove(r, XS_QUEUED, NULL, err, sizeof err) != BT_OK)
        return fail_run(r, "store", err);
    json_t *assets = targets_of(r, true);
    long long job_id = 0;
    enum bt_err e = bt_store_job_add(ex->st, r->id, r->only, assets, ex->conf.job_attempts,
                                     bt_wall_ms(), &job_id, err, sizeof err);
    json_decref(assets);
    if (e != BT_OK)
        return fail_run(r, "store", err);
    char *msg = bt_asprintf("queued to run in the background (estimated %d s)", estimate);
    audit_ex(ex, ex->st, r->request_id, r->actor, "execution_enqueued",
             json_pack("{s:s, s:I, s:i, s:i}", "execution_id", r->id, "job_id", (json_int_t)job_id,
                       "step", r->only, "estimate_s", estimate));
    notify_progress(r, -1, "queued", msg);
    json_t *o = summary(r);
    json_object_set_new(o, "background", json_true());
    json_object_set_new(o, "job_id", json_integer(job_id));
    json_object_set_new(o, "message", json_string(msg));
    free(msg);
    return o;
}

static json_t *active_job(bt_store *st, const char *id);

/* The body of bt_execute_run; job is the background job being run, or
 * NULL. *requeue is set when a job's assets are busy. */
static json_t *run_internal(bt_execute *ex, const char *execution_id, int step,
                            enum bt_execute_mode mode, const char *actor, const json_t *job,
                            bool *requeue)
{
    struct run r;
    char err[BT_ERRLEN];
    json_t *o = run_load(ex, execution_id, actor, &r);
    if (o)
        return o;
    r.only = step;
    r.job = job;
    bool startable = r.xstate == XS_APPROVED || r.xstate == XS_QUEUED ||
                     (step >= 0 && r.xstate == XS_PENDING_APPROVAL);
    if (!startable) {
        char *msg = bt_asprintf(
            "execution %s is %s; only %s can run", execution_id, xs_names[r.xstate],
            step >= 0 ? "a pending, approved or queued execution" : "an approved or queued one");
        o = fail_run(&r, "invalid_state", msg);
        free(msg);
        run_free(&r);
        return o;
    }
    if (!job && r.xstate == XS_QUEUED) {
        /* Queued for a worker: running it here as well would run it twice. */
        json_t *j = active_job(ex->st, execution_id);
        if (j) {
            char *msg = bt_asprintf("execution %s is queued in the background (job %lld); a "
                                    "worker will run it",
                                    execution_id,
                                    (long long)json_integer_value(json_object_get(j, "job_id")));
            json_decref(j);
            o = fail_run(&r, "invalid_state", msg);
            free(msg);
            run_free(&r);
            return o;
        }
    }
    if (step >= 0) {
        size_t blocker = 0;
        char *msg = NULL;
        if ((size_t)step >= r.n)
            msg = bt_asprintf("the plan has no step %d (it has %zu)", step + 1, r.n);
        else if (r.state[step] != SS_PENDING)
            msg = bt_asprintf("step %d has already run (%s)", step + 1, ss_names[r.state[step]]);
        else if (!deps_completed(&r, (size_t)step, &blocker))
            msg = bt_asprintf("step %d needs step %zu to complete first (it is %s)", step + 1,
                              blocker + 1, ss_names[r.state[blocker]]);
        if (msg) {
            o = fail_run(&r, "invalid_step", msg);
            free(msg);
            run_free(&r);
            return o;
        }
    }
    if (ensure_rows(&r, err, sizeof err) != BT_OK) {
        o = fail_run(&r, "store", err);
        run_free(&r);
        return o;
    }
    int estimate = bt_execute_estimate_s(ex, r.plan, step);
    if (!job && should_background(&r, mode, estimate)) {
        o = enqueue(&r, estimate);
        run_free(&r);
        return o;
    }
    if (!take_locks(&r, &o)) {
        if (requeue)
            *requeue = r.requeue;
        run_free(&r);
        return o;
    }
    int from = r.xstate;
    enum bt_err e = bt_store_execution_own(ex->st, execution_id, xs_names[from], ex->self.host,
                                           ex->self.pid, ex->self.start[0] ? ex->self.start : NULL,
                                           (int)r.n, err, sizeof err);
    if (e != BT_OK) {
        /* Someone else moved it first (another process started it, or it
         * was cancelled): nothing runs. */
        char ignored[BT_ERRLEN];
        bt_store_locks_release(ex->st, execution_id, ignored, sizeof ignored);
        o = fail_run(&r, e == BT_ENOENT ? "invalid_state" : "store", err);
        run_free(&r);
        return o;
    }
    r.xstate = XS_RUNNING;
    audit_ex(ex, ex->st, r.request_id, r.actor, "execution_started",
             json_pack("{s:s, s:i, s:i, s:s, s:I}", "execution_id", execution_id, "steps", (int)r.n,
                       "step", step, "host", ex->self.host, "pid", (json_int_t)ex->self.pid));
    notify_progress(&r, -1, "running", NULL);
    /* A run resumed from the store may already hold a failed step. */
    for (size_t i = 0; i < r.n; i++)
        if (r.state[i] == SS_FAILED || r.state[i] == SS_TIMED_OUT || r.state[i] == SS_INTERRUPTED)
            r.failed = true;
    if (!r.failed)
        run_steps(&r);
    if (r.failed)
        compensate(&r);
    o = run_finish(&r);
    run_free(&r);
    return o;
}

json_t *bt_execute_run(bt_execute *ex, const char *execution_id, int step,
                       enum bt_execute_mode mode, const char *actor)
{
    if (!ex || !execution_id)
        return fail_early(execution_id, NULL, "not_found", "no execution given");
    return run_internal(ex, execution_id, step < 0 ? -1 : step, mode, actor, NULL, NULL);
}

/* ---- stopping ------------------------------------------------------------------------------ */

json_t *bt_execute_cancel(bt_execute *ex, const char *execution_id, const char *actor,
                          const char *reason)
{
    struct run r;
    char err[BT_ERRLEN];
    json_t *o = run_load(ex, execution_id, actor, &r);
    if (o)
        return o;
    if (!(xs_next[r.xstate] & BIT(XS_CANCELLED)) || r.xstate == XS_RUNNING) {
        char *msg = bt_asprintf("execution %s is %s and cannot be cancelled now", execution_id,
                                xs_names[r.xstate]);
        o = fail_run(&r, "invalid_state", msg);
        free(msg);
        run_free(&r);
        return o;
    }
    for (size_t i = 0; i < r.n; i++)
        if (r.state[i] == SS_PENDING && json_array_size(json_object_get(r.exe, "steps")))
            smove(&r, i, SS_CANCELLED, NULL);
    count_done(&r);
    o = summary(&r);
    json_object_set_new(o, "state", json_string("cancelled"));
    json_object_set_new(o, "message", json_string(reason ? reason : "cancelled"));
    if (xmove(&r, XS_CANCELLED, o, err, sizeof err) != BT_OK) {
        json_object_set_new(o, "state", json_string(xs_names[r.xstate]));
        json_object_set_new(o, "error", json_string("store"));
        json_object_set_new(o, "message", json_string(err));
    } else {
        bt_store_locks_release(ex->st, execution_id, err, sizeof err);
        audit_ex(ex, ex->st, r.request_id, r.actor, "execution_cancelled",
                 json_pack("{s:s, s:s?}", "execution_id", execution_id, "reason", reason));
    }
    run_free(&r);
    return o;
}

/* Mark a running execution (exe, from bt_store_execution_get) interrupted:
 * its running steps interrupted, pending ones cancelled, locks released,
 * audit and a notification for the requester. why: what happened, in
 * words. Returns the record for recover's list. */
static json_t *interrupt(bt_store *st, const json_t *exe, const char *why, const char *actor)
{
    char err[BT_ERRLEN];
    const char *id = step_str(exe, "execution_id");
    const char *rid = step_str(exe, "request_id");
    json_t *stored = NULL;
    const json_t *steps = NULL;
    if (bt_store_plan_get(st, step_str(exe, "plan_id"), &stored, err, sizeof err) == BT_OK)
        steps = json_object_get(json_object_get(stored, "plan"), "steps");
    json_t *idx = json_array();
    bt_buf text = BT_BUF_INIT(4096);
    bt_buf_printf(&text, "Execution %.8s\xe2\x80\xa6 was interrupted: %s.", id, why);
    size_t k;
    json_t *row;
    json_array_foreach(json_object_get(exe, "steps"), k, row)
    {
        const char *s = step_str(row, "state");
        json_int_t i = json_integer_value(json_object_get(row, "index"));
        if (s && strcmp(s, "running") == 0) {
            json_t *res =
                json_pack("{s:s}", "error",
                          "interrupted: baton stopped while this step ran; it may or may not "
                          "have taken effect, and it will not be run again");
            bt_store_step_set(st, id, (int)i, "interrupted", res, err, sizeof err);
            json_decref(res);
            json_array_append_new(idx, json_integer(i));
            const json_t *ps = json_array_get(steps, (size_t)i);
            const char *target = step_str(ps, "target");
            bt_buf_printf(&text,
                          " Step %lld (%s%s%s) was running and may or may not have taken effect; "
                          "it will not be run again.",
                          (long long)i + 1,
                          step_str(row, "tool") ? step_str(row, "tool") : "a step",
                          target ? " on " : "", target ? target : "");
        } else if (s && strcmp(s, "pending") == 0) {
            bt_store_step_set(st, id, (int)i, "cancelled", NULL, err, sizeof err);
        }
    }
    bt_buf_puts(&text, " Check the target, then ask again: a retry needs a new approval.");
    json_t *result = json_pack("{s:s, s:s, s:O, s:s}", "execution_id", id, "state", "interrupted",
                               "interrupted_steps", idx, "message", text.data);
    enum bt_err e =
        bt_store_execution_transition(st, id, "running", "interrupted", result, err, sizeof err);
    json_decref(result);
    json_t *rec = NULL;
    if (e == BT_OK) {
        bt_store_locks_release(st, id, err, sizeof err);
        if (bt_store_notify(st, id, text.data, err, sizeof err) != BT_OK)
            bt_log(BT_LOG_ERROR, "execute", rid, "notify: %s", err);
        audit(st, rid, actor, "execution_interrupted",
              json_pack("{s:s, s:O, s:s}", "execution_id", id, "steps", idx, "reason", why));
        rec = json_pack("{s:s, s:s, s:O, s:O?, s:O?, s:s}", "execution_id", id, "state",
                        "interrupted", "interrupted_steps", idx, "requester",
                        json_object_get(exe, "requester"), "owner", json_object_get(exe, "owner"),
                        "message", text.data);
    } else {
        bt_log(BT_LOG_ERROR, "execute", rid, "interrupt %s: %s", id, err);
    }
    json_decref(idx);
    json_decref(stored);
    bt_buf_free(&text);
    return rec;
}

static bool any_step_in(const json_t *exe, const char *state)
{
    size_t k;
    json_t *row;
    json_array_foreach(json_object_get(exe, "steps"), k, row)
    {
        const char *s = step_str(row, "state");
        if (s && strcmp(s, state) == 0)
            return true;
    }
    return false;
}

/* The execution's job that is available or running, or NULL (new ref). */
static json_t *active_job(bt_store *st, const char *id)
{
    json_t *jobs = NULL;
    char err[BT_ERRLEN];
    json_t *found = NULL;
    if (bt_store_jobs_of(st, id, &jobs, err, sizeof err) != BT_OK)
        return NULL;
    size_t i;
    json_t *j;
    json_array_foreach(jobs, i, j)
    {
        const char *s = step_str(j, "state");
        if (s && (strcmp(s, "available") == 0 || strcmp(s, "running") == 0)) {
            json_decref(found);
            found = json_incref(j);
        }
    }
    json_decref(jobs);
    return found;
}

json_t *bt_execute_recover(bt_store *st, const char *actor, char *err, size_t errlen)
{
    struct owner self;
    owner_self(&self);
    json_t *running = NULL;
    if (bt_store_executions_running(st, &running, err, errlen) != BT_OK)
        return NULL;
    json_t *out = json_array();
    size_t k;
    json_t *row;
    json_array_foreach(running, k, row)
    {
        const char *host = step_str(row, "owner_host");
        json_t *pid = json_object_get(row, "owner_pid");
        /* No owner recorded: nothing can be said about it. */
        if (!host || !json_is_integer(pid) ||
            owner_alive(&self, host, json_integer_value(pid), step_str(row, "owner_start")))
            continue;
        const char *id = step_str(row, "execution_id");
        json_t *exe = NULL;
        char e2[BT_ERRLEN];
        if (bt_store_execution_get(st, id, &exe, e2, sizeof e2) != BT_OK)
            continue;
        char why[400];
        bt_fmt(why, sizeof why, "the baton process running it (pid %lld on %s) stopped",
               (long long)json_integer_value(pid), host);
        json_t *job = active_job(st, id);
        const char *jstate = step_str(job, "state");
        const char *worker = step_str(job, "locked_by");
        json_t *rec = NULL;
        if (job && !any_step_in(exe, "running")) {
            /* A background job between steps: nothing may have been half
             * done, so it goes back on the queue. */
            if (bt_store_execution_transition(st, id, "running", "queued", NULL, e2, sizeof e2) ==
                BT_OK) {
                if (jstate && strcmp(jstate, "running") == 0 && worker)
                    bt_store_job_finish(st, json_integer_value(json_object_get(job, "job_id")),
                                        worker, "available", bt_wall_ms(), why, false, e2,
                                        sizeof e2);
                audit(st, step_str(exe, "request_id"), actor, "execution_requeued",
                      json_pack("{s:s, s:s}", "execution_id", id, "reason", why));
                rec = json_pack("{s:s, s:s, s:[], s:O?, s:O?, s:s}", "execution_id", id, "state",
                                "queued", "interrupted_steps", "requester",
                                json_object_get(exe, "requester"), "owner",
                                json_object_get(exe, "owner"), "message", why);
            }
        } else {
            rec = interrupt(st, exe, why, actor);
            if (rec && jstate && strcmp(jstate, "running") == 0 && worker)
                bt_store_job_finish(st, json_integer_value(json_object_get(job, "job_id")), worker,
                                    "dead", 0, why, false, e2, sizeof e2);
        }
        if (rec)
            json_array_append_new(out, rec);
        json_decref(job);
        json_decref(exe);
    }
    json_decref(running);
    return out;
}

/* ---- the background worker ---------------------------------------------------------------- */

static void maybe_recover(bt_execute *ex)
{
    int64_t now = bt_mono_ms();
    if (ex->last_recover_ms && now - ex->last_recover_ms < EXEC_RECOVER_EVERY_MS)
        return;
    ex->last_recover_ms = now;
    char err[BT_ERRLEN];
    json_t *rec = bt_execute_recover(ex->st, EXEC_ACTOR_WORKER, err, sizeof err);
    if (!rec)
        bt_log(BT_LOG_ERROR, "execute", NULL, "recovery: %s", err);
    json_decref(rec);
}

static void job_end(bt_execute *ex, long long job_id, const char *state, int64_t run_at,
                    const char *why, bool uncount)
{
    char err[BT_ERRLEN];
    if (bt_store_job_finish(ex->st, job_id, ex->worker, state, run_at, why, uncount, err,
                            sizeof err) != BT_OK)
        bt_log(BT_LOG_WARN, "execute", NULL, "job %lld: %s", job_id, err);
}

bool bt_execute_worker_once(bt_execute *ex, json_t **out)
{
    if (out)
        *out = NULL;
    maybe_recover(ex);
    char err[BT_ERRLEN];
    json_t *job = NULL;
    if (bt_store_job_claim(ex->st, ex->worker, (int64_t)ex->conf.job_lease_s * 1000, &job, err,
                           sizeof err) != BT_OK) {
        bt_log(BT_LOG_ERROR, "execute", NULL, "job queue: %s", err);
        return false;
    }
    if (!job)
        return false;
    long long job_id = json_integer_value(json_object_get(job, "job_id"));
    const char *id = step_str(job, "execution_id");
    int step = (int)json_integer_value(json_object_get(job, "step"));
    json_t *exe = NULL;
    if (bt_store_execution_get(ex->st, id, &exe, err, sizeof err) != BT_OK) {
        job_end(ex, job_id, "dead", 0, err, false);
        json_decref(job);
        return true;
    }
    const char *xs = step_str(exe, "state");
    bool reclaimed = json_is_true(json_object_get(job, "reclaimed"));
    if (xs && strcmp(xs, "running") == 0 && !reclaimed) {
        /* Someone runs it right now (not through this job): offer the job
         * again; once the execution ends the queue drops it. */
        job_end(ex, job_id, "available", bt_wall_ms() + EXEC_JOB_RETRY_MS,
                "the execution was running elsewhere", true);
        json_decref(exe);
        json_decref(job);
        return true;
    }
    if (xs && strcmp(xs, "running") == 0) {
        /* Taken over from a worker that stopped heartbeating. */
        if (any_step_in(exe, "running")) {
            char why[600];
            bt_fmt(why, sizeof why,
                   "the worker running it (%.200s) stopped responding (its lease of %d s ran "
                   "out)",
                   json_is_string(json_object_get(job, "previous_worker"))
                       ? step_str(job, "previous_worker")
                       : "unknown",
                   ex->conf.job_lease_s);
            json_t *rec = interrupt(ex->st, exe, why, EXEC_ACTOR_WORKER);
            job_end(ex, job_id, "dead", 0, why, false);
            if (out && rec) {
                *out = json_incref(rec);
                json_object_set_new(*out, "job_id", json_integer(job_id));
            }
            json_decref(rec);
            json_decref(exe);
            json_decref(job);
            return true;
        }
        if (bt_store_execution_transition(ex->st, id, "running", "queued", NULL, err, sizeof err) !=
            BT_OK) {
            job_end(ex, job_id, "dead", 0, err, false);
            json_decref(exe);
            json_decref(job);
            return true;
        }
        audit_ex(ex, ex->st, step_str(exe, "request_id"), EXEC_ACTOR_WORKER, "execution_requeued",
                 json_pack("{s:s, s:s}", "execution_id", id, "reason",
                           "its worker stopped before a step started"));
    }
    json_decref(exe);
    if (json_integer_value(json_object_get(job, "attempt")) >
        json_integer_value(json_object_get(job, "max_attempts"))) {
        char why[200];
        bt_fmt(why, sizeof why, "gave up after %lld attempts",
               (long long)json_integer_value(json_object_get(job, "max_attempts")));
        job_end(ex, job_id, "dead", 0, why, false);
        json_t *c = bt_execute_cancel(ex, id, EXEC_ACTOR_WORKER, why);
        if (out)
            *out = c;
        else
            json_decref(c);
        json_decref(job);
        return true;
    }
    ex->job_id = job_id;
    ex->job_beat_ms = bt_mono_ms();
    bool requeue = false;
    json_t *o = run_internal(ex, id, step, BT_EXECUTE_NOW, EXEC_ACTOR_WORKER, job, &requeue);
    ex->job_id = 0;
    const char *error = step_str(o, "error");
    const char *xs_end = step_str(o, "state");
    if (requeue)
        job_end(ex, job_id, "available", bt_wall_ms() + EXEC_JOB_RETRY_MS, step_str(o, "message"),
                true);
    else if (error && strcmp(error, "store") == 0 && xs_end && strcmp(xs_end, "running") == 0)
        /* The run could not record its end even after waiting for the
         * store, so the store still shows the execution running here. Handed
         * back as available, the job would be passed over for ever ("running
         * elsewhere") and the execution never end. Left running under this
         * worker without heartbeats, it is taken over once its lease runs
         * out, like the job of a worker that died: a step still recorded as
         * running is reported interrupted (never run again), an execution
         * whose steps all ended is finished. */
        bt_log(BT_LOG_ERROR, "execute", NULL,
               "job %lld: the end of execution %s could not be recorded (%s); it is taken over "
               "when its lease of %d s runs out",
               job_id, id, step_str(o, "message") ? step_str(o, "message") : "store error",
               ex->conf.job_lease_s);
    else if (error && strcmp(error, "store") == 0)
        job_end(ex, job_id, "available", bt_wall_ms() + EXEC_JOB_RETRY_MS, step_str(o, "message"),
                false);
    else
        job_end(ex, job_id, error ? "dead" : "done", 0, error ? step_str(o, "message") : NULL,
                false);
    json_object_set_new(o, "job_id", json_integer(job_id));
    if (out)
        *out = o;
    else
        json_decref(o);
    json_decref(job);
    return true;
}
