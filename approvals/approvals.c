/*
 * approvals.c - the approval dialogue. approvals.h is the contract;
 * docs/approvals.md ("The approval dialogue") is the operator's view.
 *
 * Where the state lives. Nothing is kept in memory between calls: the
 * approval row (state, expiry, reminder and escalation marks) and one row per
 * person per step in approval_decisions are the whole state, so a new
 * bt_approvals on the same store, in this process or another, after a crash
 * or not, carries on where the last one stopped.
 *
 * How a decision is made. Everything that can be read before taking the lock
 * is read first: the approval and its requirement, the plan (the store hashes
 * its text again, and it must hash to requirement.plan_hash), and for a step
 * release the execution's step states. Then bt_store_approval_update takes
 * the write lock, re-reads the approval with every decision, and runs
 * decide_check, which looks only at that locked snapshot and at the policy
 * and says what to write. Because the check runs under the lock, two
 * approvers clicking at the same moment (two threads or two processes) are
 * serialised: the second sees the first's decision, and only one of them
 * completes the approval. Step states read before the lock are safe to use:
 * a step that has completed stays completed for as long as its approval is
 * releasing.
 *
 * The state machine is the table `transition` below: for each state, which
 * events may happen and where each leads. decide_check turns a click into an
 * event (after the checks that need more than the state: who the user is,
 * how many approvals are in, which step is next) and the table says whether
 * the event is possible now. A state with no way out is final.
 *
 * The order of the checks is part of the contract:
 *   1. the same person clicking the same button again -> "already", with who
 *      and when, before anything else (even after the approval has closed),
 *      and never a second run;
 *   2. a final state -> refused, saying who closed it and when;
 *   3. past its expiry -> the approval becomes expired, and the click is
 *      refused;
 *   4. who: the policy (bt_policy_may_decide), plus "a decision cannot be
 *      changed" for someone who already decided this step otherwise;
 *   5. what: the event and its guards (M distinct approvers, steps in order,
 *      the previous step completed), then the table.
 *
 * Audit. Every answer is in the audit log after the decision is stored:
 * approval_decided / approval_cancelled for what was recorded,
 * approval_refused for every refusal and every "already" (with status), and
 * approval_expired, approval_reminder, approval_escalated from the sweep and
 * from a click that found the approval past its expiry. Tokens and the key
 * are never written anywhere.
 */
#include "approvals/approvals.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "approvals/approvals_int.h"
#include "bot/log.h"
#include "bot/util.h"

#define REASON_MAX 512
#define USER_MAX 255
#define VIA_MAX 64

struct bt_approvals {
    bt_store *st;            /* borrowed */
    const bt_policy *policy; /* borrowed */
    unsigned char key[BT_APPROVALS__KEY_LEN];
    char **users; /* configured user names, for may_decide and notify lists */
    size_t nusers;
};

/* ---- the state machine ---------------------------------------------------- */

enum ap_state {
    ST_NONE = 0, /* "no transition" in the table; never stored */
    ST_PENDING,
    ST_RELEASING,
    ST_APPROVED,
    ST_DENIED,
    ST_CANCELLED,
    ST_EXPIRED,
    ST__COUNT
};

static const char *const state_names[ST__COUNT] = {
    [ST_NONE] = NULL,           [ST_PENDING] = "pending", [ST_RELEASING] = "releasing",
    [ST_APPROVED] = "approved", [ST_DENIED] = "denied",   [ST_CANCELLED] = "cancelled",
    [ST_EXPIRED] = "expired",
};

enum ap_event {
    EV_APPROVE,          /* a plan approval, more are needed */
    EV_APPROVE_LAST,     /* the M-th plan approval at level 1 or 2: the plan runs */
    EV_APPROVE_STEPWISE, /* the M-th plan approval at level 3: steps are released */
    EV_RELEASE,          /* level 3: release the next step (not the last) */
    EV_RELEASE_LAST,     /* level 3: release the last step */
    EV_DENY,             /* anyone who may decide: the plan stops */
    EV_CANCEL,           /* the requester withdraws */
    EV_EXPIRE,           /* time passed the expiry */
    EV__COUNT
};

/* transition[state][event]: the state after the event, or ST_NONE when the
 * event cannot happen in that state. The rows of the final states are empty:
 * nothing leaves approved, denied, cancelled or expired. Deny is possible in
 * both open states (a plan can be stopped at any point); cancel only while
 * pending (once approvers have approved, stopping is a deny). */
static const unsigned char transition[ST__COUNT][EV__COUNT] = {
    [ST_PENDING] =
        {
            [EV_APPROVE] = ST_PENDING,
            [EV_APPROVE_LAST] = ST_APPROVED,
            [EV_APPROVE_STEPWISE] = ST_RELEASING,
            [EV_DENY] = ST_DENIED,
            [EV_CANCEL] = ST_CANCELLED,
            [EV_EXPIRE] = ST_EXPIRED,
        },
    [ST_RELEASING] =
        {
            [EV_RELEASE] = ST_RELEASING,
            [EV_RELEASE_LAST] = ST_APPROVED,
            [EV_DENY] = ST_DENIED,
            [EV_EXPIRE] = ST_EXPIRED,
        },
};

static enum ap_state state_parse(const char *s)
{
    for (int i = ST_PENDING; i < ST__COUNT; i++)
        if (s && strcmp(s, state_names[i]) == 0)
            return (enum ap_state)i;
    return ST_NONE;
}

static bool state_final(enum ap_state s)
{
    for (int e = 0; e < EV__COUNT; e++)
        if (transition[s][e] != ST_NONE)
            return false;
    return true;
}

/* ---- small helpers -------------------------------------------------------- */

static void when(int64_t ms, char out[32])
{
    bt_iso8601(ms, out, 32);
}

static const char *str_of(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static long long int_of(const json_t *o, const char *key)
{
    return (long long)json_integer_value(json_object_get(o, key));
}

/* A name a front-end may hand us: non-empty, bounded, UTF-8. */
static bool name_ok(const char *s, size_t max)
{
    if (!s || !*s)
        return false;
    size_t n = strnlen(s, max + 1);
    return n <= max && bt_utf8_valid(s, n);
}

static bool hex64(const char *s)
{
    if (!s || strlen(s) != 64)
        return false;
    for (const char *c = s; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
            return false;
    return true;
}

/* The decision of user on step, or NULL. */
static const json_t *find_decision(const json_t *decisions, const char *user, int step)
{
    size_t i;
    const json_t *d;
    json_array_foreach(decisions, i, d)
    {
        const char *u = str_of(d, "user");
        if (u && strcmp(u, user) == 0 && int_of(d, "step") == step)
            return d;
    }
    return NULL;
}

/* Plan approvals so far (distinct people: one row per person per step). */
static size_t plan_approvals(const json_t *decisions)
{
    size_t n = 0, i;
    const json_t *d;
    json_array_foreach(decisions, i, d)
    {
        const char *dec = str_of(d, "decision");
        if (int_of(d, "step") == -1 && dec && strcmp(dec, "approve") == 0)
            n++;
    }
    return n;
}

/* The release of step (an approve decision on it), or NULL. */
static const json_t *find_release(const json_t *decisions, int step)
{
    size_t i;
    const json_t *d;
    json_array_foreach(decisions, i, d)
    {
        const char *dec = str_of(d, "decision");
        if (int_of(d, "step") == step && dec && strcmp(dec, "approve") == 0)
            return d;
    }
    return NULL;
}

/* The lowest step not released yet (steps are released in order). */
static int next_unreleased(const json_t *decisions)
{
    int n = 0;
    while (n <= BT_APPROVALS__STEP_MAX && find_release(decisions, n))
        n++;
    return n;
}

/* The last decision of the given kind (NULL: any kind), or NULL. */
static const json_t *last_decision(const json_t *decisions, const char *kind)
{
    const json_t *last = NULL;
    size_t i;
    const json_t *d;
    json_array_foreach(decisions, i, d)
    {
        const char *dec = str_of(d, "decision");
        if (!kind || (dec && strcmp(dec, kind) == 0))
            last = d;
    }
    return last;
}

static long long approvals_required(const json_t *req)
{
    long long m = int_of(req, "approvals_required");
    return m < 1 ? 1 : m;
}

/* "approved this plan", "released step 2", "denied step 1", ... */
static void describe(const json_t *d, char *buf, size_t len)
{
    const char *dec = str_of(d, "decision");
    long long step = int_of(d, "step");
    if (dec && strcmp(dec, "cancel") == 0)
        bt_fmt(buf, len, "cancelled this request");
    else if (step < 0)
        bt_fmt(buf, len, "%s this plan", dec && strcmp(dec, "deny") == 0 ? "denied" : "approved");
    else
        bt_fmt(buf, len, "%s step %lld", dec && strcmp(dec, "deny") == 0 ? "denied" : "released",
               step + 1);
}

/* "bob approved this plan at 2026-...Z (console)" */
static void who_when(const json_t *d, char *buf, size_t len)
{
    char what[64], at[32];
    describe(d, what, sizeof what);
    when(int_of(d, "ts_ms"), at);
    const char *via = str_of(d, "via");
    if (via)
        bt_fmt(buf, len, "%s %s at %s (%s)", str_of(d, "user"), what, at, via);
    else
        bt_fmt(buf, len, "%s %s at %s", str_of(d, "user"), what, at);
}

/* Why a final approval can take no more decisions, naming who closed it. */
static void final_reason(enum ap_state s, const json_t *ap, char *buf, size_t len)
{
    const json_t *decisions = json_object_get(ap, "decisions");
    char who[256] = "";
    const json_t *d = NULL;
    switch (s) {
    case ST_APPROVED:
        d = last_decision(decisions, "approve");
        break;
    case ST_DENIED:
        d = last_decision(decisions, "deny");
        break;
    case ST_CANCELLED:
        d = last_decision(decisions, "cancel");
        break;
    default:
        break;
    }
    if (d)
        who_when(d, who, sizeof who);
    if (s == ST_EXPIRED) {
        char at[32];
        when(int_of(ap, "expires_ms"), at);
        bt_fmt(buf, len, "this approval expired at %s; the request has to be made again", at);
    } else if (s == ST_APPROVED) {
        bt_fmt(buf, len, "this approval is already complete (%s); nothing more to decide",
               d ? who : "no decision recorded");
    } else {
        bt_fmt(buf, len, "this approval is already %s (%s); it cannot be decided any more",
               state_names[s], d ? who : "no decision recorded");
    }
}

/* Human text as a JSON string. A reason may quote an id cut short with
 * "%.64s", which can split a UTF-8 sequence: then non-ASCII bytes become '?'
 * rather than the reason going missing. */
static json_t *text_json(const char *s)
{
    json_t *j = json_string(s ? s : "");
    if (j)
        return j;
    char *copy = bt_strdup(s);
    for (char *c = copy; *c; c++)
        if ((unsigned char)*c >= 0x80)
            *c = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

static void audit(bt_approvals *a, const char *request_id, const char *actor, const char *event,
                  json_t *detail /* stolen */)
{
    char err[BT_ERRLEN];
    if (request_id && !*request_id)
        request_id = NULL;
    if (bt_store_audit_append(a->st, request_id, actor, event, detail, err, sizeof err) != BT_OK)
        bt_log(BT_LOG_ERROR, "approvals", request_id, "audit log: %s not written: %s", event, err);
    json_decref(detail);
}

/* ---- views ---------------------------------------------------------------- */

/* Users (from bt_approvals_set_users) the policy lets decide ap now and who
 * have not decided what is being decided (the plan while pending; the next
 * step while releasing). */
static json_t *may_decide_list(bt_approvals *a, const json_t *ap, const json_t *decisions,
                               int next_step)
{
    json_t *out = json_array();
    enum ap_state s = state_parse(str_of(ap, "state"));
    if (s != ST_PENDING && s != ST_RELEASING)
        return out;
    const json_t *req = json_object_get(ap, "requirement");
    const char *requester = str_of(req, "requester");
    char why[REASON_MAX];
    for (size_t i = 0; i < a->nusers; i++) {
        const char *u = a->users[i];
        if (find_decision(decisions, u, s == ST_PENDING ? -1 : next_step))
            continue;
        if (bt_policy_may_decide(a->policy, req, requester, u, why, sizeof why))
            json_array_append_new(out, json_string(u));
    }
    return out;
}

/* bt_approvals_get's object from the stored approval ap (borrowed). */
static json_t *view(bt_approvals *a, const json_t *ap)
{
    const char *id = str_of(ap, "approval_id");
    const json_t *req = json_object_get(ap, "requirement");
    char err[BT_ERRLEN];
    json_t *decisions = NULL;
    if (bt_store_approval_decisions(a->st, id, &decisions, err, sizeof err) != BT_OK)
        decisions = json_array();
    json_t *plan = NULL;
    long long nsteps = -1;
    if (bt_store_plan_get(a->st, str_of(ap, "plan_id"), &plan, err, sizeof err) == BT_OK)
        nsteps =
            (long long)json_array_size(json_object_get(json_object_get(plan, "plan"), "steps"));
    json_decref(plan);

    json_t *v = json_object();
    json_object_set(v, "approval_id", json_object_get(ap, "approval_id"));
    json_object_set(v, "plan_id", json_object_get(ap, "plan_id"));
    json_object_set(v, "execution_id", json_object_get(ap, "execution_id"));
    json_object_set(v, "level", json_object_get(ap, "level"));
    json_object_set(v, "state", json_object_get(ap, "state"));
    const char *requester = str_of(req, "requester");
    const char *hash = str_of(req, "plan_hash");
    json_object_set_new(v, "requester", requester ? json_string(requester) : json_null());
    json_object_set_new(v, "plan_hash", hash ? json_string(hash) : json_null());
    json_object_set(v, "expires_ms", json_object_get(ap, "expires_ms"));
    json_object_set(v, "created_ms", json_object_get(ap, "created_ms"));
    json_object_set_new(v, "approvals_required", json_integer(approvals_required(req)));
    json_object_set_new(v, "step_count", nsteps >= 0 ? json_integer(nsteps) : json_null());

    json_t *approved_by = json_array();
    json_t *released = json_array();
    size_t i;
    json_t *d;
    json_array_foreach(decisions, i, d)
    {
        const char *dec = str_of(d, "decision");
        if (!dec || strcmp(dec, "approve") != 0)
            continue;
        if (int_of(d, "step") < 0)
            json_array_append(approved_by, json_object_get(d, "user"));
        else
            json_array_append(released, json_object_get(d, "step"));
    }
    int next = next_unreleased(decisions);
    bool releasing = state_parse(str_of(ap, "state")) == ST_RELEASING;
    json_object_set_new(v, "approved_by", approved_by);
    json_object_set_new(v, "released_steps", released);
    json_object_set_new(v, "next_step",
                        releasing && (nsteps < 0 || next < nsteps) ? json_integer(next)
                                                                   : json_null());
    json_object_set_new(v, "may_decide", may_decide_list(a, ap, decisions, next));
    json_object_set_new(v, "decisions", decisions);
    return v;
}

/* The answer of decide/cancel: {status, reason, approval, run, step}. */
static json_t *answer(bt_approvals *a, const char *approval_id, const char *status,
                      const char *reason, const char *run, int step)
{
    json_t *r = json_object();
    json_object_set_new(r, "status", json_string(status));
    json_object_set_new(r, "reason", text_json(reason));
    json_t *ap = approval_id ? bt_approvals_get(a, approval_id) : NULL;
    json_object_set_new(r, "approval", ap ? ap : json_null());
    json_object_set_new(r, "run", json_string(run));
    json_object_set_new(r, "step", strcmp(run, "step") == 0 ? json_integer(step) : json_null());
    return r;
}

/* ---- deciding --------------------------------------------------------------- */

/* One click, as it came in. */
struct click {
    const char *approval_id;
    const char *user;
    const char *decision; /* "approve" | "deny" | "cancel" */
    int step;
    const char *via;
    bool token;  /* it came in a signed token */
    bool cancel; /* from bt_approvals_cancel: decision is "cancel" */
};

/* decide_check's context: what was read before the lock, and its verdict. */
struct decide_ctx {
    bt_approvals *a;
    const struct click *c;
    int64_t now;
    long long nsteps;         /* steps in the (verified) plan */
    const json_t *exec_steps; /* borrowed: the execution's steps, or NULL */
    const char *exec_err;     /* why exec_steps is NULL, when it was needed */
    /* the verdict */
    const char *status; /* "recorded" | "already" | "refused" */
    char reason[REASON_MAX];
    const char *run; /* "none" | "plan" | "step" */
    enum ap_state after;
    bool expired_now;
};

static void refuse(struct decide_ctx *d, const char *why)
{
    d->status = "refused";
    bt_strlcpy(d->reason, why, sizeof d->reason);
}

/* The state of step index in the execution's steps, or NULL. */
static const char *exec_step_state(const json_t *steps, long long index)
{
    size_t i;
    const json_t *s;
    json_array_foreach(steps, i, s)
    {
        if (int_of(s, "index") == index)
            return str_of(s, "state");
    }
    return NULL;
}

/* Fire ev from `from` into change, or refuse with why_not when the table
 * has no such transition. */
static bool fire(struct decide_ctx *d, enum ap_state from, enum ap_event ev,
                 struct bt_store_approval_change *change, const char *why_not)
{
    enum ap_state to = (enum ap_state)transition[from][ev];
    if (to == ST_NONE) {
        refuse(d, why_not);
        return false;
    }
    if (to != from)
        change->state = state_names[to];
    d->after = to;
    return true;
}

/* Record the click as a decision in change. */
static void record(struct decide_ctx *d, struct bt_store_approval_change *change)
{
    change->user = d->c->user;
    change->decision = d->c->decision;
    change->step = d->c->step;
    change->via = d->c->via;
    d->status = "recorded";
}

/* The requester withdraws (under the lock). */
static void cancel_check(struct decide_ctx *d, enum ap_state from, const json_t *ap,
                         struct bt_store_approval_change *change)
{
    const char *requester = str_of(json_object_get(ap, "requirement"), "requester");
    char why[REASON_MAX];
    if (!requester || strcmp(requester, d->c->user) != 0) {
        bt_fmt(why, sizeof why, "only the requester (%s) may cancel this request",
               requester ? requester : "unknown");
        refuse(d, why);
        return;
    }
    if (!fire(d, from, EV_CANCEL, change,
              "the plan already has its approvals and its steps are being released: it can no "
              "longer be cancelled (an approver can still deny it)"))
        return;
    record(d, change);
    bt_fmt(d->reason, sizeof d->reason, "cancelled by %s: nothing will run", d->c->user);
}

/* approve/deny (under the lock), after the checks common to every click. */
static void decision_check(struct decide_ctx *d, enum ap_state from, const json_t *ap,
                           struct bt_store_approval_change *change)
{
    const struct click *c = d->c;
    const json_t *req = json_object_get(ap, "requirement");
    const json_t *decisions = json_object_get(ap, "decisions");
    const char *requester = str_of(req, "requester");
    long long level = int_of(ap, "level");
    long long m = approvals_required(req);
    char why[REASON_MAX];

    /* Who. The policy says whether this user may decide at all (role,
     * groups, never the requester from level 2 on); the same person deciding
     * one step twice was answered before ("already"), or differently: */
    if (!bt_policy_may_decide(d->a->policy, req, requester, c->user, why, sizeof why)) {
        refuse(d, why);
        return;
    }
    const json_t *mine = find_decision(decisions, c->user, c->step);
    if (mine) {
        char who[256];
        who_when(mine, who, sizeof who);
        bt_fmt(why, sizeof why,
               "%s: a decision cannot be changed, and the same person never counts twice", who);
        refuse(d, why);
        return;
    }
    if (level < 3 && c->step != -1) {
        bt_fmt(why, sizeof why,
               "level %lld approves the whole plan at once: there is no step %d to decide", level,
               c->step + 1);
        refuse(d, why);
        return;
    }
    if (c->step >= d->nsteps) {
        bt_fmt(why, sizeof why, "the plan has %lld step%s: there is no step %d", d->nsteps,
               d->nsteps == 1 ? "" : "s", c->step + 1);
        refuse(d, why);
        return;
    }

    if (strcmp(c->decision, "deny") == 0) {
        if (!fire(d, from, EV_DENY, change, "this approval cannot be denied now"))
            return;
        record(d, change);
        bt_fmt(d->reason, sizeof d->reason, "denied by %s: the plan stops here", c->user);
        return;
    }

    if (c->step == -1) {
        /* A plan approval: M distinct people. */
        size_t have = plan_approvals(decisions) + 1;
        enum ap_event ev = EV_APPROVE;
        if ((long long)have >= m)
            ev = level >= 3 && d->nsteps > 0 ? EV_APPROVE_STEPWISE : EV_APPROVE_LAST;
        bt_fmt(why, sizeof why,
               "the plan already has its %lld approval%s and its steps are being released one at a "
               "time (next: step %d)",
               m, m == 1 ? "" : "s", next_unreleased(decisions) + 1);
        if (!fire(d, from, ev, change, why))
            return;
        record(d, change);
        if (ev == EV_APPROVE)
            bt_fmt(d->reason, sizeof d->reason,
                   "approval %zu of %lld recorded (%s); waiting for %lld more approver%s (never "
                   "the requester, never the same person twice)",
                   have, m, c->user, m - (long long)have, m - (long long)have == 1 ? "" : "s");
        else if (ev == EV_APPROVE_STEPWISE)
            bt_fmt(d->reason, sizeof d->reason,
                   "the plan has its %lld approvals (the last by %s); now each step is released in "
                   "turn by an approver, starting with step 0",
                   m, c->user);
        else {
            bt_fmt(d->reason, sizeof d->reason, "approved by %s: the plan runs now", c->user);
            d->run = "plan";
        }
        return;
    }

    /* A step release (level 3). The table refuses it while pending; after
     * that the guards: in order, and only once the previous step completed. */
    bt_fmt(why, sizeof why,
           "step %d cannot be released yet: the plan needs %lld approvals first (%zu so far)",
           c->step + 1, m, plan_approvals(decisions));
    if (transition[from][EV_RELEASE] == ST_NONE) {
        refuse(d, why);
        return;
    }
    int next = next_unreleased(decisions);
    if (c->step < next) {
        char who[256];
        who_when(find_release(decisions, c->step), who, sizeof who);
        bt_fmt(why, sizeof why, "step %d was already released: %s", c->step + 1, who);
        refuse(d, why);
        return;
    }
    if (c->step > next) {
        bt_fmt(why, sizeof why, "step %d cannot be released before step %d: steps run in order",
               c->step + 1, next + 1);
        refuse(d, why);
        return;
    }
    if (c->step > 0) {
        if (!d->exec_steps) {
            bt_fmt(why, sizeof why,
                   "step %d cannot be released: the state of step %d is unknown (%s)", c->step + 1,
                   c->step, d->exec_err ? d->exec_err : "no execution recorded");
            refuse(d, why);
            return;
        }
        const char *prev = exec_step_state(d->exec_steps, c->step - 1);
        if (!prev || strcmp(prev, "completed") != 0) {
            bool stopped = prev && strcmp(prev, "pending") != 0 && strcmp(prev, "running") != 0;
            if (stopped)
                bt_fmt(why, sizeof why,
                       "step %d did not complete (it is %s): step %d cannot be released", c->step,
                       prev, c->step + 1);
            else
                bt_fmt(why, sizeof why,
                       "step %d has not completed yet (it is %s): release step %d once it has",
                       c->step, prev ? prev : "not started", c->step + 1);
            refuse(d, why);
            return;
        }
    }
    enum ap_event ev = c->step == d->nsteps - 1 ? EV_RELEASE_LAST : EV_RELEASE;
    if (!fire(d, from, ev, change, why))
        return;
    record(d, change);
    d->run = "step";
    bt_fmt(d->reason, sizeof d->reason, "step %d released by %s: it runs now%s", c->step + 1,
           c->user, ev == EV_RELEASE_LAST ? " (the last step)" : "");
}

/* The check run under the store's lock (bt_store_approval_check). Refusals
 * are verdicts, not errors: it returns BT_OK with nothing (or only the
 * expiry) to write. */
static enum bt_err decide_check(void *ctx, const json_t *ap,
                                struct bt_store_approval_change *change, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    struct decide_ctx *d = ctx;
    const struct click *c = d->c;
    const json_t *decisions = json_object_get(ap, "decisions");
    enum ap_state from = state_parse(str_of(ap, "state"));
    d->after = from;
    char why[REASON_MAX];
    if (from == ST_NONE) {
        bt_fmt(why, sizeof why, "this approval is in an unknown state '%.32s'",
               str_of(ap, "state") ? str_of(ap, "state") : "");
        refuse(d, why);
        return BT_OK;
    }

    /* 1. The same button again: who decided and when, nothing else. */
    const json_t *mine = find_decision(decisions, c->user, c->step);
    const char *mine_decision = mine ? str_of(mine, "decision") : NULL;
    if (mine_decision && strcmp(mine_decision, c->decision) == 0) {
        char who[256];
        who_when(mine, who, sizeof who);
        d->status = "already";
        bt_fmt(d->reason, sizeof d->reason, "already decided: %s", who);
        return BT_OK;
    }
    /* 2. Closed. */
    if (state_final(from)) {
        final_reason(from, ap, why, sizeof why);
        refuse(d, why);
        return BT_OK;
    }
    /* 3. Past its expiry: the click is what notices, so it also records
     * the expiry (the sweep would have, a little later). */
    if (d->now >= int_of(ap, "expires_ms")) {
        fire(d, from, EV_EXPIRE, change, "");
        d->expired_now = true;
        final_reason(ST_EXPIRED, ap, why, sizeof why);
        refuse(d, why);
        return BT_OK;
    }
    if (strcmp(c->decision, "cancel") == 0)
        cancel_check(d, from, ap, change);
    else
        decision_check(d, from, ap, change);
    return BT_OK;
}

/* Refused before the lock was taken (nothing stored changed): audit and
 * answer. */
static json_t *refused_early(bt_approvals *a, const struct click *c, const char *request_id,
                             const char *approval_id, const char *reason)
{
    json_t *detail = json_object();
    json_object_set_new(detail, "approval_id",
                        approval_id ? json_string(approval_id) : json_null());
    json_object_set_new(detail, "user", c->user ? json_string(c->user) : json_null());
    json_object_set_new(detail, "via", c->via ? json_string(c->via) : json_null());
    json_object_set_new(detail, "decision", c->decision ? json_string(c->decision) : json_null());
    json_object_set_new(detail, "step", json_integer(c->step));
    json_object_set_new(detail, "token", json_boolean(c->token));
    json_object_set_new(detail, "status", json_string("refused"));
    json_object_set_new(detail, "reason", text_json(reason));
    audit(a, request_id, c->user, "approval_refused", detail);
    return answer(a, approval_id, "refused", reason, "none", -1);
}

/* Everything the decision needs that can be read before the lock: the
 * approval (must exist and be bound to a requester and a plan hash) and the
 * plan (must still hash to that plan hash). NULL when all is well; else the
 * refusal, already audited. */
static json_t *prepare(bt_approvals *a, const struct click *c, json_t **ap_out,
                       char request_id[256], long long *nsteps)
{
    char err[BT_ERRLEN], why[REASON_MAX];
    request_id[0] = '\0';
    *ap_out = NULL;
    json_t *ap = NULL;
    enum bt_err e = bt_store_approval_get(a->st, c->approval_id, &ap, err, sizeof err);
    if (e == BT_ENOENT) {
        bt_fmt(why, sizeof why, "there is no approval '%.64s'", c->approval_id);
        return refused_early(a, c, NULL, NULL, why);
    }
    if (e != BT_OK) {
        bt_fmt(why, sizeof why, "the approval cannot be read: %s", err);
        return refused_early(a, c, NULL, c->approval_id, why);
    }
    const json_t *req = json_object_get(ap, "requirement");
    const char *bound = str_of(req, "plan_hash");
    json_t *plan = NULL;
    e = bt_store_plan_get(a->st, str_of(ap, "plan_id"), &plan, err, sizeof err);
    if (plan)
        bt_strlcpy(request_id, str_of(plan, "request_id") ? str_of(plan, "request_id") : "", 256);
    json_t *refusal = NULL;
    if (!hex64(bound) || !str_of(req, "requester")) {
        bt_fmt(
            why, sizeof why,
            "this approval is not bound to a plan hash and a requester, so it cannot be decided; "
            "the request has to be made again");
        refusal = refused_early(a, c, request_id, c->approval_id, why);
    } else if (e == BT_ECORRUPT) {
        bt_fmt(why, sizeof why,
               "the plan changed after it was shown: the stored plan no longer matches the hash "
               "this approval is bound to (%.12s...); nothing will run, and the request has to be "
               "made again",
               bound);
        refusal = refused_early(a, c, request_id, c->approval_id, why);
    } else if (e != BT_OK) {
        bt_fmt(why, sizeof why, "the plan cannot be read: %s", err);
        refusal = refused_early(a, c, request_id, c->approval_id, why);
    } else if (strcmp(str_of(plan, "sha256") ? str_of(plan, "sha256") : "", bound) != 0) {
        bt_fmt(why, sizeof why,
               "the plan changed after it was shown: this approval is bound to plan %.12s..., the "
               "stored plan is %.12s...; nothing will run, and the request has to be made again",
               bound, str_of(plan, "sha256") ? str_of(plan, "sha256") : "?");
        refusal = refused_early(a, c, request_id, c->approval_id, why);
    }
    if (!refusal)
        *nsteps =
            (long long)json_array_size(json_object_get(json_object_get(plan, "plan"), "steps"));
    json_decref(plan);
    if (refusal) {
        json_decref(ap);
        return refusal;
    }
    *ap_out = ap;
    return NULL;
}

/* A click, from bt_approvals_decide, _decide_token or _cancel. */
static json_t *decide_click(bt_approvals *a, const struct click *c)
{
    char why[REASON_MAX];
    if (!name_ok(c->user, USER_MAX)) {
        struct click anon = *c;
        anon.user = NULL;
        return refused_early(a, &anon, NULL, name_ok(c->approval_id, 255) ? c->approval_id : NULL,
                             "no user: a decision needs the authenticated user who made it");
    }
    if (c->via && !name_ok(c->via, VIA_MAX)) {
        struct click novia = *c;
        novia.via = NULL;
        return refused_early(a, &novia, NULL, NULL,
                             "the channel the decision came from is invalid");
    }
    if (!name_ok(c->approval_id, 255))
        return refused_early(a, c, NULL, NULL, "no approval named");
    bool known = c->decision && (c->cancel ? strcmp(c->decision, "cancel") == 0
                                           : strcmp(c->decision, "approve") == 0 ||
                                                 strcmp(c->decision, "deny") == 0);
    if (!known) {
        struct click bad = *c;
        bad.decision = NULL;
        return refused_early(a, &bad, NULL, c->approval_id,
                             "unknown decision: it must be approve or deny");
    }
    if (c->step < -1 || c->step > BT_APPROVALS__STEP_MAX) {
        bt_fmt(why, sizeof why, "step %d is out of range", c->step + 1);
        return refused_early(a, c, NULL, c->approval_id, why);
    }

    json_t *ap = NULL;
    char request_id[256];
    long long nsteps = 0;
    json_t *refusal = prepare(a, c, &ap, request_id, &nsteps);
    if (refusal)
        return refusal;

    /* A step release needs the previous step's state. */
    char err[BT_ERRLEN];
    json_t *exec = NULL;
    const char *exec_err = NULL;
    const char *exec_id = str_of(ap, "execution_id");
    if (c->step > 0 && strcmp(c->decision, "approve") == 0) {
        if (!exec_id)
            exec_err = "this approval has no execution";
        else if (bt_store_execution_get(a->st, exec_id, &exec, err, sizeof err) != BT_OK)
            exec_err = err;
    }
    struct decide_ctx d = {
        .a = a,
        .c = c,
        .now = bt_wall_ms(),
        .nsteps = nsteps,
        .exec_steps = exec ? json_object_get(exec, "steps") : NULL,
        .exec_err = exec_err,
        .status = "refused",
        .run = "none",
    };
    char serr[BT_ERRLEN];
    enum bt_err e =
        bt_store_approval_update(a->st, c->approval_id, decide_check, &d, serr, sizeof serr);
    json_decref(exec);
    long long level = int_of(ap, "level");
    json_decref(ap);
    if (e != BT_OK) {
        bt_fmt(why, sizeof why, "the decision could not be stored: %s", serr);
        return refused_early(a, c, request_id, c->approval_id, why);
    }

    if (d.expired_now)
        audit(a, request_id, "baton", "approval_expired",
              json_pack("{s:s, s:I, s:s}", "approval_id", c->approval_id, "level",
                        (json_int_t)level, "noticed_by", "decision"));
    json_t *detail = json_object();
    json_object_set_new(detail, "approval_id", json_string(c->approval_id));
    json_object_set_new(detail, "user", json_string(c->user));
    json_object_set_new(detail, "via", c->via ? json_string(c->via) : json_null());
    json_object_set_new(detail, "decision", json_string(c->decision));
    json_object_set_new(detail, "step", json_integer(c->step));
    json_object_set_new(detail, "token", json_boolean(c->token));
    json_object_set_new(detail, "state", json_string(state_names[d.after]));
    const char *event;
    if (strcmp(d.status, "recorded") != 0) {
        event = "approval_refused";
        json_object_set_new(detail, "status", json_string(d.status));
        json_object_set_new(detail, "reason", text_json(d.reason));
    } else {
        event = strcmp(c->decision, "cancel") == 0 ? "approval_cancelled" : "approval_decided";
        json_object_set_new(detail, "run", json_string(d.run));
    }
    audit(a, request_id, c->user, event, detail);
    return answer(a, c->approval_id, d.status, d.reason, d.run, c->step);
}

static void sweep_approval(bt_approvals *a, const char *approval_id, int64_t now, json_t *events);

/* ---- public API ------------------------------------------------------------- */

/* bt_approvals_new: see approvals.h. */
bt_approvals *bt_approvals_new(bt_store *st, const bt_policy *policy, char *err, size_t errlen)
{
    if (!st || !policy) {
        bt_fmt(err, errlen, "approvals: a store and a policy are needed");
        return NULL;
    }
    bt_approvals *a = bt_calloc(1, sizeof *a);
    a->st = st;
    a->policy = policy;
    if (bt_approvals__key_load(st, a->key, err, errlen) != BT_OK) {
        bt_approvals_free(a);
        return NULL;
    }
    return a;
}

static void users_clear(bt_approvals *a)
{
    for (size_t i = 0; i < a->nusers; i++)
        free(a->users[i]);
    free(a->users);
    a->users = NULL;
    a->nusers = 0;
}

/* bt_approvals_free: wipes the key; NULL is a no-op. */
void bt_approvals_free(bt_approvals *a)
{
    if (!a)
        return;
    users_clear(a);
    OPENSSL_cleanse(a->key, sizeof a->key);
    free(a);
}

/* bt_approvals_set_users: see approvals.h. Names that are not non-empty
 * UTF-8 strings are skipped. */
void bt_approvals_set_users(bt_approvals *a, const json_t *users)
{
    if (!a)
        return;
    users_clear(a);
    size_t n = json_is_array(users) ? json_array_size(users) : json_object_size(users);
    a->users = bt_calloc(n + 1, sizeof *a->users);
    if (json_is_array(users)) {
        size_t i;
        json_t *u;
        json_array_foreach(users, i, u)
        {
            if (name_ok(json_string_value(u), USER_MAX))
                a->users[a->nusers++] = bt_strdup(json_string_value(u));
        }
    } else if (json_is_object(users)) {
        const char *k;
        json_t *u;
        json_object_foreach((json_t *)users, k, u)
        {
            if (name_ok(k, USER_MAX))
                a->users[a->nusers++] = bt_strdup(k);
        }
    }
}

/* bt_approvals_token: see approvals.h. The token signs the approval's
 * current plan hash and expiry. */
char *bt_approvals_token(bt_approvals *a, const char *approval_id, int step, const char *decision)
{
    if (!a || !name_ok(approval_id, 255))
        return NULL;
    json_t *ap = NULL;
    char err[BT_ERRLEN];
    if (bt_store_approval_get(a->st, approval_id, &ap, err, sizeof err) != BT_OK)
        return NULL;
    const char *hash = str_of(json_object_get(ap, "requirement"), "plan_hash");
    char *t = bt_approvals__token_mint(a->key, approval_id, step, decision, hash,
                                       (int64_t)int_of(ap, "expires_ms"));
    json_decref(ap);
    return t;
}

/* bt_approvals_decide: see approvals.h. */
json_t *bt_approvals_decide(bt_approvals *a, const char *approval_id, const char *user,
                            const char *decision, int step, const char *via)
{
    struct click c = {approval_id, user, decision, step, via, false, false};
    return decide_click(a, &c);
}

/* bt_approvals_cancel: see approvals.h. */
json_t *bt_approvals_cancel(bt_approvals *a, const char *approval_id, const char *user,
                            const char *via)
{
    struct click c = {approval_id, user, "cancel", -1, via, false, true};
    return decide_click(a, &c);
}

/* bt_approvals_decide_token: see approvals.h. The token is checked in this
 * order: format, signature (against the plan hash the named approval is
 * bound to), expiry; then it is an ordinary click by user, so replays are
 * answered from the stored decisions ("already" for the same person, refused
 * for a released step or a closed approval). The token itself is never
 * logged or audited. */
json_t *bt_approvals_decide_token(bt_approvals *a, const char *token, const char *user,
                                  const char *via)
{
    struct bt_approvals__token t;
    struct click c = {NULL, name_ok(user, USER_MAX) ? user : NULL,     NULL,
                      -1,   via && name_ok(via, VIA_MAX) ? via : NULL, true,
                      false};
    if (!bt_approvals__token_parse(token, &t))
        return refused_early(a, &c, NULL, NULL,
                             "this is not a valid approval token: it is malformed (forged or "
                             "damaged)");
    c.decision = t.decision;
    c.step = t.step;
    json_t *ap = NULL;
    char err[BT_ERRLEN];
    const char *forged = "this approval token was forged or altered: its signature does not match";
    enum bt_err e = bt_store_approval_get(a->st, t.approval_id, &ap, err, sizeof err);
    if (e == BT_ENOENT)
        return refused_early(a, &c, NULL, NULL, forged);
    if (e != BT_OK) {
        char why[REASON_MAX];
        bt_fmt(why, sizeof why, "the approval cannot be read: %s", err);
        return refused_early(a, &c, NULL, t.approval_id, why);
    }
    bool ok = bt_approvals__token_verify(a->key, &t,
                                         str_of(json_object_get(ap, "requirement"), "plan_hash"));
    json_decref(ap);
    if (!ok)
        return refused_early(a, &c, NULL, t.approval_id, forged);
    c.approval_id = t.approval_id;
    if (bt_wall_ms() >= t.expires_ms) {
        char why[REASON_MAX], at[32];
        when(t.expires_ms, at);
        bt_fmt(why, sizeof why,
               "this approval token expired at %s; the request has to be made again", at);
        /* The approval expired with it: record that now rather than at the
         * next sweep. */
        sweep_approval(a, t.approval_id, bt_wall_ms(), NULL);
        return refused_early(a, &c, NULL, t.approval_id, why);
    }
    c.user = user;
    c.via = via;
    return decide_click(a, &c);
}

/* bt_approvals_get: see approvals.h. */
json_t *bt_approvals_get(bt_approvals *a, const char *approval_id)
{
    if (!a || !name_ok(approval_id, 255))
        return NULL;
    json_t *ap = NULL;
    char err[BT_ERRLEN];
    if (bt_store_approval_get(a->st, approval_id, &ap, err, sizeof err) != BT_OK)
        return NULL;
    json_t *v = view(a, ap);
    json_decref(ap);
    return v;
}

/* bt_approvals_list_pending: see approvals.h. A store failure gives an
 * empty array (and a log line). */
json_t *bt_approvals_list_pending(bt_approvals *a)
{
    json_t *out = json_array();
    json_t *open = NULL;
    char err[BT_ERRLEN];
    if (!a)
        return out;
    if (bt_store_approvals_open(a->st, &open, err, sizeof err) != BT_OK) {
        bt_log(BT_LOG_ERROR, "approvals", NULL, "list pending approvals: %s", err);
        return out;
    }
    size_t i;
    json_t *ap;
    json_array_foreach(open, i, ap)
    {
        json_array_append_new(out, view(a, ap));
    }
    json_decref(open);
    return out;
}

/* ---- time --------------------------------------------------------------------- */

struct sweep_ctx {
    int64_t now;
    bool expired, reminded, escalated;
};

/* Under the lock: what time has made due. Each mark is written once, so a
 * reminder or escalation goes out once however many sweepers run. */
static enum bt_err sweep_check(void *ctx, const json_t *ap, struct bt_store_approval_change *change,
                               char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    struct sweep_ctx *s = ctx;
    enum ap_state from = state_parse(str_of(ap, "state"));
    enum ap_state to = from == ST_NONE ? ST_NONE : (enum ap_state)transition[from][EV_EXPIRE];
    if (to == ST_NONE)
        return BT_OK;
    if (s->now >= int_of(ap, "expires_ms")) {
        change->state = state_names[to];
        s->expired = true;
        return BT_OK;
    }
    const json_t *req = json_object_get(ap, "requirement");
    int64_t created = (int64_t)int_of(ap, "created_ms");
    long long remind_s = int_of(req, "remind_s"), escalate_s = int_of(req, "escalate_s");
    if (remind_s > 0 && json_is_null(json_object_get(ap, "reminded_ms")) &&
        s->now >= created + remind_s * 1000)
        s->reminded = change->reminded = true;
    if (escalate_s > 0 && str_of(req, "escalate_to") &&
        json_is_null(json_object_get(ap, "escalated_ms")) && s->now >= created + escalate_s * 1000)
        s->escalated = change->escalated = true;
    return BT_OK;
}

/* Sweep one approval: its events appended to events (may be NULL). */
static void sweep_approval(bt_approvals *a, const char *approval_id, int64_t now, json_t *events)
{
    struct sweep_ctx s = {.now = now};
    char err[BT_ERRLEN];
    if (bt_store_approval_update(a->st, approval_id, sweep_check, &s, err, sizeof err) != BT_OK) {
        bt_log(BT_LOG_ERROR, "approvals", NULL, "sweep approval %.64s: %s", approval_id, err);
        return;
    }
    if (!s.expired && !s.reminded && !s.escalated)
        return;
    json_t *ap = NULL;
    if (bt_store_approval_get(a->st, approval_id, &ap, err, sizeof err) != BT_OK)
        return;
    const json_t *req = json_object_get(ap, "requirement");
    json_t *plan = NULL;
    char request_id[256] = "";
    if (bt_store_plan_get(a->st, str_of(ap, "plan_id"), &plan, err, sizeof err) == BT_OK &&
        str_of(plan, "request_id"))
        bt_strlcpy(request_id, str_of(plan, "request_id"), sizeof request_id);
    json_decref(plan);
    json_t *level = json_object_get(ap, "level");

    if (s.expired) {
        const char *requester = str_of(req, "requester");
        json_t *ev = json_pack("{s:s, s:s, s:O, s:[]}", "type", "expired", "approval_id",
                               approval_id, "level", level, "notify");
        if (requester)
            json_array_append_new(json_object_get(ev, "notify"), json_string(requester));
        audit(a, request_id, "baton", "approval_expired",
              json_pack("{s:s, s:O, s:O, s:O}", "approval_id", approval_id, "level", level,
                        "expires_ms", json_object_get(ap, "expires_ms"), "notify",
                        json_object_get(ev, "notify")));
        if (events)
            json_array_append(events, ev);
        json_decref(ev);
    }
    if (s.reminded) {
        json_t *decisions = NULL;
        if (bt_store_approval_decisions(a->st, approval_id, &decisions, err, sizeof err) != BT_OK)
            decisions = json_array();
        json_t *notify = may_decide_list(a, ap, decisions, next_unreleased(decisions));
        json_decref(decisions);
        json_t *ev = json_pack("{s:s, s:s, s:O, s:o}", "type", "reminder", "approval_id",
                               approval_id, "level", level, "notify", notify);
        audit(a, request_id, "baton", "approval_reminder",
              json_pack("{s:s, s:O, s:O}", "approval_id", approval_id, "level", level, "notify",
                        json_object_get(ev, "notify")));
        if (events)
            json_array_append(events, ev);
        json_decref(ev);
    }
    if (s.escalated) {
        const char *group = str_of(req, "escalate_to");
        json_t *notify = json_array();
        for (size_t i = 0; i < a->nusers; i++)
            if (bt_policy_user_in_group(a->policy, a->users[i], group))
                json_array_append_new(notify, json_string(a->users[i]));
        json_t *ev = json_pack("{s:s, s:s, s:O, s:s, s:o}", "type", "escalation", "approval_id",
                               approval_id, "level", level, "group", group, "notify", notify);
        audit(a, request_id, "baton", "approval_escalated",
              json_pack("{s:s, s:O, s:s, s:O}", "approval_id", approval_id, "level", level, "group",
                        group, "notify", json_object_get(ev, "notify")));
        if (events)
            json_array_append(events, ev);
        json_decref(ev);
    }
    json_decref(ap);
}

/* bt_approvals_sweep: see approvals.h. */
json_t *bt_approvals_sweep(bt_approvals *a, int64_t now_ms)
{
    json_t *events = json_array();
    json_t *open = NULL;
    char err[BT_ERRLEN];
    if (!a)
        return events;
    if (bt_store_approvals_open(a->st, &open, err, sizeof err) != BT_OK) {
        bt_log(BT_LOG_ERROR, "approvals", NULL, "sweep: %s", err);
        return events;
    }
    size_t i;
    json_t *ap;
    json_array_foreach(open, i, ap)
    {
        sweep_approval(a, str_of(ap, "approval_id"), now_ms, events);
    }
    json_decref(open);
    return events;
}
