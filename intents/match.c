/*
 * match.c - classify one request.
 *
 *   1. normalise: tokens, lowercase, punctuation stripped (vocab.c);
 *   2. correct typos of unknown words against the vocabulary;
 *   3. score every intent: its best matching pattern (strong) plus the
 *      weights of its keywords found after synonyms (weak);
 *   4. the best intent wins when its confidence reaches MIN_CONFIDENCE, else
 *      the request is "unknown" and gets suggestions;
 *   5. entities of the winner: its pattern's named groups first, then the
 *      entities' own extractor patterns, then known values anywhere;
 *   6. hosts: inventory names, hostnames and IPs anywhere outside entity
 *      values, plus host-like words nobody knows (unresolved);
 *   7. a question ("how do I ...") names its topic: the action intent its
 *      rest would be.
 *
 * Everything a call needs lives in one block allocated for it (sized by the
 * request) and one PCRE2 match data, so calls share nothing but the
 * read-only catalog.
 */
#include <stdlib.h>
#include <string.h>

#include "bot/util.h"
#include "intents/intents_int.h"

/* Below this the request is "unknown". */
#define MIN_CONFIDENCE 0.5
/* A matched pattern counts this many keyword points per unit of weight:
 * the pattern weight decides, keywords only break ties between intents
 * whose best patterns weigh the same (keyword points stay far below). */
#define PATTERN_POINTS 100.0
/* Keyword-only: each point of keyword weight is worth this much confidence,
 * up to KEYWORD_CEILING (so 2.5 points reach MIN_CONFIDENCE). */
#define KEYWORD_CONFIDENCE 0.2
#define KEYWORD_CEILING 0.75
#define AMBIGUITY_PENALTY 0.15
/* A question's topic needs a pattern or this many keyword points. */
#define TOPIC_MIN_POINTS 1.0
#define MAX_SUGGESTIONS 3

struct tok {
    uint32_t off, len;   /* whole token in norm, quotes included */
    uint32_t ioff, ilen; /* inner text in norm (no quotes) */
    uint32_t roff, rlen; /* inner text in raw (before correction) */
    uint32_t ooff;       /* inner text in the original (when verbatim) */
    int32_t id;          /* word id or -1 */
    bool quoted, verbatim, corrected;
};

struct slot {
    bool set;
    uint32_t s, e;     /* value bytes in norm */
    const char *fixed; /* canonical value (catalog-owned), or NULL */
    char num[24];      /* computed number, or "" */
};

struct span {
    uint32_t s, e;
};

struct cand {
    long intent; /* -1: none */
    long pat;    /* best matching pattern, -1: keywords only */
    double kw;   /* keyword points */
    double score;
};

struct req {
    const bt_intents *in;
    const char *text;
    size_t len;
    char *raw;
    struct bt_intents__rawtok *rt;
    char *norm;
    size_t nlen, normmax;
    char *sub;
    struct tok *tok;
    size_t ntok, maxtok;
    int32_t *ids, *canon, *scanon;
    size_t ncanon;
    struct slot *slots;
    struct span *spans;
    size_t nspans, maxspans;
    pcre2_match_data *md;
};

/* Carve n bytes, 8-aligned, from *p. */
static void *carve(char **p, size_t n)
{
    void *r = *p;
    *p += (n + 7) & ~(size_t)7;
    return r;
}

/* Scratch for one request, sized by its length, in one allocation (free
 * it with free()). */
static struct req *req_new(const bt_intents *in, const char *text, size_t len)
{
    size_t maxtok = len / 2 + 2;
    size_t rawmax = len + 8, normmax = 2 * len + 64, maxspans = in->nentities + 8;
    size_t total =
        sizeof(struct req) + 8 + rawmax + 2 * normmax +
        maxtok * (sizeof(struct bt_intents__rawtok) + sizeof(struct tok) + 3 * sizeof(int32_t)) +
        in->nentities * sizeof(struct slot) + maxspans * sizeof(struct span) + 128;
    char *block = bt_calloc(1, total);
    char *p = block;
    struct req *r = carve(&p, sizeof *r);
    r->in = in;
    r->text = text;
    r->len = len;
    r->maxtok = maxtok;
    r->maxspans = maxspans;
    r->normmax = normmax;
    r->raw = carve(&p, rawmax);
    r->norm = carve(&p, normmax);
    r->sub = carve(&p, normmax);
    r->rt = carve(&p, maxtok * sizeof *r->rt);
    r->tok = carve(&p, maxtok * sizeof *r->tok);
    r->ids = carve(&p, maxtok * sizeof *r->ids);
    r->canon = carve(&p, maxtok * sizeof *r->canon);
    r->scanon = carve(&p, maxtok * sizeof *r->scanon);
    r->slots = carve(&p, in->nentities * sizeof *r->slots);
    r->spans = carve(&p, maxspans * sizeof *r->spans);
    return r;
}

/* ---- normalisation ---------------------------------------------------- */

/* An unknown word the corrector may look at: ASCII letters, digits and
 * hyphens, starting with a letter (so never a number, an IP, a path, a
 * version or a key like max_connections). */
static bool correctable(const char *s, size_t n)
{
    if (n < 4 || n > BT_INTENTS__MAX_WORD || s[0] < 'a' || s[0] > 'z' || s[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

/* Append to the normalised text. The text never outgrows its buffer (each
 * token is at most 2 bytes longer once corrected, and corrected tokens are
 * at least 4 bytes plus a separator); the check is a second guard. */
static void put(struct req *r, const char *s, size_t n)
{
    if (r->nlen + n >= r->normmax)
        return;
    memcpy(r->norm + r->nlen, s, n);
    r->nlen += n;
}

/* Tokenize the request, correct typos and write the normalised text; fill
 * the token table and the canonical word sequence. */
static void normalise(struct req *r)
{
    const bt_intents *in = r->in;
    size_t nrt = bt_intents__tokenize(r->text, r->len, r->rt, r->maxtok, r->raw, r->len + 8);
    bool inquote = false;
    for (size_t i = 0; i < nrt; i++) {
        const struct bt_intents__rawtok *rt = &r->rt[i];
        size_t lead = rt->qopen ? 1 : 0, trail = rt->qclose ? 1 : 0;
        if (lead + trail > rt->blen)
            trail = 0;
        bool quoted = inquote || rt->qopen;
        if (rt->qopen && !rt->qclose)
            inquote = true;
        else if (rt->qclose && !rt->qopen)
            inquote = false;
        size_t ilen = rt->blen - lead - trail;
        if (ilen == 0)
            continue;
        const char *inner = r->raw + rt->boff + lead;
        struct tok *t = &r->tok[r->ntok++];
        t->id = bt_intents__word_find(in, inner, ilen);
        t->quoted = quoted;
        t->roff = rt->boff + (uint32_t)lead;
        t->rlen = (uint32_t)ilen;
        t->ooff = rt->off + (uint32_t)lead;
        t->verbatim = rt->verbatim;
        if (t->id < 0 && !quoted && correctable(inner, ilen)) {
            int32_t to = bt_intents__correct(in, inner, ilen);
            if (to >= 0) {
                t->id = to;
                t->corrected = true;
                t->verbatim = false;
            }
        }
        if (r->nlen)
            put(r, " ", 1);
        t->off = (uint32_t)r->nlen;
        if (lead)
            put(r, "'", 1);
        t->ioff = (uint32_t)r->nlen;
        if (t->corrected)
            put(r, in->words[t->id].text, in->words[t->id].len);
        else
            put(r, inner, ilen);
        t->ilen = (uint32_t)r->nlen - t->ioff;
        if (trail)
            put(r, "'", 1);
        t->len = (uint32_t)r->nlen - t->off;
    }
    r->norm[r->nlen] = '\0';
    for (size_t i = 0; i < r->ntok; i++)
        r->ids[i] = r->tok[i].quoted ? -1 : r->tok[i].id;
    r->ncanon = bt_intents__canon(in, r->ids, r->ntok, r->canon);
}

/* ---- scoring ---------------------------------------------------------- */

static bool matches(const struct req *r, const pcre2_code *re, const char *subj, size_t len)
{
    /* A pattern that hits its match limit counts as not matching: the limit
     * is there so a pathological request cannot stall a worker. */
    int rc = pcre2_match(re, (PCRE2_SPTR)subj, len, 0, PCRE2_NO_UTF_CHECK, r->md, r->in->mctx);
    return rc >= 0;
}

/* Sum of the weights of its keywords found in canon[0..nc). */
static double keyword_points(const struct req *r, const struct bt_intents__intent *it,
                             const int32_t *canon, size_t nc)
{
    double pts = 0;
    for (size_t k = 0; k < it->nkws; k++)
        if (bt_intents__phrase_find(r->in, it->kws[k].words, canon, nc) >= 0)
            pts += it->kws[k].weight;
    return pts;
}

/* Score every intent on subj (its canonical words canon[0..nc)). With
 * actions_only, information and question intents are left out (the topic of
 * a question is an action). best and second get the two highest; on equal
 * scores the intent earlier in the catalog wins. */
static void score_all(struct req *r, const char *subj, size_t slen, const int32_t *canon, size_t nc,
                      bool actions_only, struct cand *best, struct cand *second)
{
    const bt_intents *in = r->in;
    *best = (struct cand){-1, -1, 0, 0};
    *second = *best;
    for (size_t i = 0; i < in->nintents; i++) {
        const struct bt_intents__intent *it = &in->intents[i];
        if (it->category == BT_INTENTS__CAT_UNKNOWN)
            continue;
        if (actions_only && (it->category == BT_INTENTS__CAT_INFORMATION || it->question))
            continue;
        bool ruled_out = false;
        for (size_t u = 0; u < it->nunless && !ruled_out; u++)
            ruled_out = matches(r, it->unless[u], subj, slen);
        if (ruled_out)
            continue;
        long pat = -1;
        double w = 0;
        for (size_t p = 0; p < it->npats; p++) {
            if (pat >= 0 && it->pats[p].weight <= w)
                continue;
            if (matches(r, it->pats[p].re, subj, slen)) {
                pat = (long)p;
                w = it->pats[p].weight;
            }
        }
        double kw = keyword_points(r, it, canon, nc);
        if (pat < 0 && kw <= 0)
            continue;
        struct cand c = {(long)i, pat, kw, (pat >= 0 ? PATTERN_POINTS * w : 0) + kw};
        if (c.score > best->score) {
            *second = *best;
            *best = c;
        } else if (c.score > second->score) {
            *second = c;
        }
    }
}

/* Confidence of the winner, 0..1. A pattern match starts at 0.8 and keywords
 * add 0.05 a point up to 1.0. Keywords alone give 0.2 a point up to 0.75,
 * less AMBIGUITY_PENALTY when the runner-up scored 80% of the winner or
 * more (so one keyword each for two intents is not enough). */
static double confidence(const struct cand *b, const struct cand *s)
{
    if (b->intent < 0)
        return 0;
    if (b->pat >= 0) {
        double k = b->kw > 4 ? 4 : b->kw;
        return 0.8 + 0.05 * k;
    }
    double c = KEYWORD_CONFIDENCE * b->kw;
    if (c > KEYWORD_CEILING)
        c = KEYWORD_CEILING;
    if (s->intent >= 0 && s->score >= 0.8 * b->score)
        c -= AMBIGUITY_PENALTY;
    return c < 0 ? 0 : c;
}

/* ---- entities --------------------------------------------------------- */

static bool in_spans(const struct req *r, uint32_t s, uint32_t e)
{
    for (size_t i = 0; i < r->nspans; i++)
        if (r->spans[i].s < e && r->spans[i].e > s)
            return true;
    return false;
}

/* Token i is quoted or part of an entity value. */
static bool tok_taken(const struct req *r, size_t i)
{
    return r->tok[i].quoted || in_spans(r, r->tok[i].ioff, r->tok[i].ioff + r->tok[i].ilen);
}

/* Remember [s, e) as taken by an entity value. */
static void add_span(struct req *r, uint32_t s, uint32_t e)
{
    if (r->nspans < r->maxspans)
        r->spans[r->nspans++] = (struct span){s, e};
}

/* Is t[0..n) a known value or alias of E? */
static bool is_alias_of(const struct bt_intents__entity *E, const char *t, size_t n)
{
    for (size_t i = 0; i < E->naliases; i++)
        if (strlen(E->aliases[i].text) == n && memcmp(E->aliases[i].text, t, n) == 0)
            return true;
    return false;
}

/* Is t[0..n) an inventory name, hostname or IP? */
static bool names_asset(const bt_intents *in, const char *t, size_t n)
{
    int32_t id = bt_intents__word_find(in, t, n);
    return id >= 0 && in->words[id].asset >= 0;
}

/* Accept norm[s, e) as the value of entity ei into slot: quotes and spaces
 * trimmed, rejected words refused, known aliases replaced by their canonical
 * value, unknown values refused for closed entities. */
static bool take_value(const struct req *r, size_t ei, size_t s, size_t e, struct slot *slot)
{
    const bt_intents *in = r->in;
    const struct bt_intents__entity *E = &in->entities[ei];
    while (s < e && (r->norm[s] == ' ' || r->norm[s] == '\''))
        s++;
    while (e > s && (r->norm[e - 1] == ' ' || r->norm[e - 1] == '\''))
        e--;
    if (s >= e)
        return false;
    const char *t = r->norm + s;
    size_t n = e - s;
    for (size_t i = 0; i < E->nreject; i++)
        if (strlen(E->reject[i]) == n && memcmp(E->reject[i], t, n) == 0)
            return false;
    slot->fixed = NULL;
    for (size_t i = 0; i < E->naliases; i++) {
        if (strlen(E->aliases[i].text) == n && memcmp(E->aliases[i].text, t, n) == 0) {
            slot->fixed = E->values[E->aliases[i].value];
            break;
        }
    }
    if (!slot->fixed && E->closed)
        return false;
    if (!slot->fixed && E->not_host && names_asset(in, t, n))
        return false;
    slot->set = true;
    slot->s = (uint32_t)s;
    slot->e = (uint32_t)e;
    return true;
}

/* A number with `add` applied ("more than 32 GB" -> 33). */
static bool take_number(const struct req *r, size_t s, size_t e, long add, struct slot *slot)
{
    char buf[24];
    if (e <= s || e - s >= sizeof buf)
        return false;
    memcpy(buf, r->norm + s, e - s);
    buf[e - s] = '\0';
    long v;
    if (!bt_parse_long(buf, 0, 1000000000L, &v))
        return false;
    v += add;
    if (v < 0)
        v = 0;
    bt_fmt(slot->num, sizeof slot->num, "%ld", v);
    slot->set = true;
    slot->fixed = NULL;
    slot->s = (uint32_t)s;
    slot->e = (uint32_t)e;
    return true;
}

/* Find the first known value of entity ei among the free tokens (longest
 * alias at the earliest position). */
static void scan_entity(struct req *r, size_t ei)
{
    const bt_intents *in = r->in;
    const struct bt_intents__entity *E = &in->entities[ei];
    for (size_t i = 0; i < r->ntok; i++) {
        if (tok_taken(r, i))
            continue;
        uint32_t best_n = 0;
        const struct bt_intents__alias *best = NULL;
        for (size_t a = 0; a < E->naliases; a++) {
            const struct bt_intents__alias *al = &E->aliases[a];
            uint32_t n = al->words.n;
            if (n <= best_n || i + n > r->ntok)
                continue;
            bool ok = true;
            for (uint32_t k = 0; ok && k < n; k++)
                ok = r->tok[i + k].id == in->pool[al->words.at + k] && !tok_taken(r, i + k);
            if (ok) {
                best_n = n;
                best = al;
            }
        }
        if (best) {
            struct slot *slot = &r->slots[ei];
            slot->set = true;
            slot->fixed = E->values[best->value];
            slot->s = r->tok[i].ioff;
            slot->e = r->tok[i + best_n - 1].ioff + r->tok[i + best_n - 1].ilen;
            add_span(r, slot->s, slot->e);
            return;
        }
    }
}

/* The topic text of a question, classified against the action intents:
 * the topic becomes the winning intent's name, or is dropped. */
static void resolve_topic(struct req *r)
{
    struct slot *slot = &r->slots[r->in->ent_topic];
    size_t n = slot->e - slot->s;
    memcpy(r->sub, r->norm + slot->s, n);
    r->sub[n] = '\0';
    size_t k = 0;
    for (size_t i = 0; i < r->ntok; i++) {
        const struct tok *t = &r->tok[i];
        if (t->ioff >= slot->s && t->ioff + t->ilen <= slot->e)
            r->scanon[k++] = r->ids[i];
    }
    /* canon may be built in place: it never writes ahead of what it reads */
    size_t nc = bt_intents__canon(r->in, r->scanon, k, r->scanon);
    struct cand best, second;
    score_all(r, r->sub, n, r->scanon, nc, true, &best, &second);
    if (best.intent >= 0 && (best.pat >= 0 || best.kw >= TOPIC_MIN_POINTS))
        slot->fixed = r->in->intents[best.intent].name;
    else
        slot->set = false;
}

/* Fill the entity slots of the winner: its pattern's groups, then the
 * extractors of the entities it takes, then scanning for known values. */
static void extract(struct req *r, const struct cand *win)
{
    const bt_intents *in = r->in;
    const struct bt_intents__intent *it = &in->intents[win->intent];
    if (win->pat >= 0) {
        const struct bt_intents__pattern *p = &it->pats[win->pat];
        int rc = pcre2_match(p->re, (PCRE2_SPTR)r->norm, r->nlen, 0, PCRE2_NO_UTF_CHECK, r->md,
                             in->mctx);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->md);
        for (uint32_t g = 1; rc > 0 && g < p->ngroups && g < (uint32_t)rc; g++) {
            int32_t e = p->group_entity[g];
            if (e < 0 || r->slots[e].set || ov[2 * g] == PCRE2_UNSET)
                continue;
            if (take_value(r, (size_t)e, ov[2 * g], ov[2 * g + 1], &r->slots[e]) &&
                (size_t)e != in->ent_host)
                add_span(r, r->slots[e].s, r->slots[e].e);
        }
    }
    for (size_t e = 0; e < in->nentities; e++) {
        const struct bt_intents__entity *E = &in->entities[e];
        if (!it->accepts[e] || r->slots[e].set || E->builtin)
            continue;
        for (size_t x = 0; x < E->nex && !r->slots[e].set; x++) {
            const struct bt_intents__extractor *ex = &E->ex[x];
            int rc = pcre2_match(ex->re, (PCRE2_SPTR)r->norm, r->nlen, 0, PCRE2_NO_UTF_CHECK, r->md,
                                 in->mctx);
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(r->md);
            if (rc <= 0 || ex->group >= (uint32_t)rc || ov[2 * ex->group] == PCRE2_UNSET)
                continue;
            size_t s = ov[2 * ex->group], en = ov[2 * ex->group + 1];
            if (in_spans(r, (uint32_t)s, (uint32_t)en))
                continue;
            bool ok = ex->has_add ? take_number(r, s, en, ex->add, &r->slots[e])
                                  : take_value(r, e, s, en, &r->slots[e]);
            if (ok)
                add_span(r, r->slots[e].s, r->slots[e].e);
        }
    }
    for (size_t e = 0; e < in->nentities; e++) {
        const struct bt_intents__entity *E = &in->entities[e];
        if (it->accepts[e] && !r->slots[e].set && E->scan && !E->builtin)
            scan_entity(r, e);
    }
    if (r->slots[in->ent_topic].set)
        resolve_topic(r);
}

/* The text of a value: canonical, computed, or as typed (keep_case: from
 * the original where the token was not rewritten) or as normalised. */
static json_t *slot_json(const struct req *r, const struct bt_intents__entity *E,
                         const struct slot *slot)
{
    if (slot->num[0])
        return json_string(slot->num);
    if (slot->fixed)
        return json_string(slot->fixed);
    if (!E->keep_case)
        return json_stringn(r->norm + slot->s, slot->e - slot->s);
    bt_buf b = BT_BUF_INIT(0);
    for (size_t i = 0; i < r->ntok; i++) {
        const struct tok *t = &r->tok[i];
        uint32_t ps = t->ioff > slot->s ? t->ioff : slot->s;
        uint32_t pe = t->ioff + t->ilen < slot->e ? t->ioff + t->ilen : slot->e;
        if (ps >= pe)
            continue;
        if (b.len)
            bt_buf_puts(&b, " ");
        if (t->verbatim)
            bt_buf_append(&b, r->text + t->ooff + (ps - t->ioff), pe - ps);
        else
            bt_buf_append(&b, r->norm + ps, pe - ps);
    }
    json_t *v = json_stringn(b.data ? b.data : "", b.len);
    bt_buf_free(&b);
    return v;
}

/* ---- hosts ------------------------------------------------------------ */

static bool array_has(const json_t *arr, const char *s, size_t n)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (json_string_length(v) == n && memcmp(json_string_value(v), s, n) == 0)
            return true;
    }
    return false;
}

/* Walk the tokens in order: inventory names, hostnames and IPs resolve to
 * assets (targets, without duplicates); host-like words and whatever the
 * winning pattern captured as host, that are not service names, are
 * unresolved. Tokens inside other entities' values are not hosts. The first
 * mention goes to *first (norm offsets) for entities.host. */
static void find_hosts(const struct req *r, bool host_slot, json_t *targets, json_t *unresolved,
                       struct span *first)
{
    const bt_intents *in = r->in;
    const struct slot *hs = &r->slots[in->ent_host];
    const struct bt_intents__entity *svc =
        in->ent_service >= 0 ? &in->entities[in->ent_service] : NULL;
    first->s = first->e = 0;
    for (size_t i = 0; i < r->ntok; i++) {
        const struct tok *t = &r->tok[i];
        if (t->quoted)
            continue;
        bool captured = host_slot && hs->set && t->ioff >= hs->s && t->ioff + t->ilen <= hs->e;
        if (!captured && in_spans(r, t->ioff, t->ioff + t->ilen))
            continue;
        const char *w = r->norm + t->ioff;
        size_t n = t->ilen;
        int32_t asset = t->id >= 0 ? in->words[t->id].asset : -1;
        if (asset < 0) {
            if (!captured && !bt_intents__hostlike(w, n))
                continue;
            if (svc && is_alias_of(svc, w, n))
                continue; /* a service is never a host */
        }
        if (first->e == 0)
            *first = (struct span){t->ioff, t->ioff + t->ilen};
        if (asset >= 0) {
            const char *name = in->assets[asset].name;
            if (!array_has(targets, name, strlen(name)))
                json_array_append_new(targets, json_string(name));
        } else if (!array_has(unresolved, w, n)) {
            json_array_append_new(unresolved, json_stringn(w, n));
        }
    }
}

/* ---- suggestions ------------------------------------------------------ */

/* Up to MAX_SUGGESTIONS catalog examples, from different intents, sharing
 * the most content words with the request (catalog order breaks ties, so a
 * request sharing nothing gets the first intents' first examples). */
static json_t *suggestions(const struct req *r)
{
    const bt_intents *in = r->in;
    json_t *out = json_array();
    long picked[MAX_SUGGESTIONS];
    size_t npicked = 0;
    while (npicked < MAX_SUGGESTIONS) {
        long best = -1;
        size_t best_score = 0;
        for (size_t x = 0; x < in->nexamples; x++) {
            const struct bt_intents__example *ex = &in->examples[x];
            if (in->intents[ex->intent].category == BT_INTENTS__CAT_UNKNOWN)
                continue;
            bool used = false;
            for (size_t k = 0; k < npicked; k++)
                if (in->examples[picked[k]].intent == ex->intent)
                    used = true;
            if (used)
                continue;
            size_t score = 0;
            for (uint32_t w = 0; w < ex->words.n; w++) {
                int32_t id = in->pool[ex->words.at + w];
                for (size_t c = 0; c < r->ncanon; c++) {
                    if (r->canon[c] == id) {
                        score++;
                        break;
                    }
                }
            }
            if (best < 0 || score > best_score) {
                best = (long)x;
                best_score = score;
            }
        }
        if (best < 0)
            break;
        picked[npicked++] = best;
        json_array_append_new(out, json_string(in->examples[best].text));
    }
    return out;
}

/* ---- the decision ----------------------------------------------------- */

static double rounded(double v)
{
    return (double)(long)(v * 1000.0 + 0.5) / 1000.0;
}

/* How the decision was reached: {pattern (1-based or null), keywords,
 * score, nearest (for unknown)}. */
static json_t *match_json(const struct req *r, const struct cand *c, bool known)
{
    const bt_intents *in = r->in;
    json_t *m = json_object();
    json_object_set_new(m, "pattern",
                        known && c->pat >= 0 ? json_integer(c->pat + 1) : json_null());
    json_t *kws = json_array();
    if (c->intent >= 0) {
        const struct bt_intents__intent *it = &in->intents[c->intent];
        for (size_t k = 0; k < it->nkws; k++)
            if (bt_intents__phrase_find(in, it->kws[k].words, r->canon, r->ncanon) >= 0)
                json_array_append_new(kws, json_string(it->kws[k].text));
    }
    json_object_set_new(m, "keywords", kws);
    json_object_set_new(m, "score", json_real(rounded(c->score)));
    if (!known && c->intent >= 0)
        json_object_set_new(m, "nearest", json_string(in->intents[c->intent].name));
    return m;
}

json_t *bt_intents__classify(const bt_intents *in, const char *text, char *err, size_t errlen)
{
    if (!text) {
        bt_fmt(err, errlen, "no request text");
        return NULL;
    }
    size_t len = strnlen(text, BT_INTENTS__MAX_INPUT + 1);
    if (len > BT_INTENTS__MAX_INPUT) {
        bt_fmt(err, errlen, "the request is longer than %d bytes", BT_INTENTS__MAX_INPUT);
        return NULL;
    }
    if (!bt_utf8_valid(text, len)) {
        bt_fmt(err, errlen, "the request is not valid UTF-8");
        return NULL;
    }
    struct req *r = req_new(in, text, len);
    r->md = pcre2_match_data_create(in->ovec_pairs, NULL);
    if (!r->md) {
        free(r);
        bt_fmt(err, errlen, "out of memory");
        return NULL;
    }
    normalise(r);

    struct cand best, second;
    score_all(r, r->norm, r->nlen, r->canon, r->ncanon, false, &best, &second);
    double conf = confidence(&best, &second);
    bool known = best.intent >= 0 && conf >= MIN_CONFIDENCE;
    const struct bt_intents__intent *it = known ? &in->intents[best.intent] : NULL;
    if (known)
        extract(r, &best);

    json_t *targets = json_array(), *unresolved = json_array();
    struct span first;
    find_hosts(r, known, targets, unresolved, &first);

    json_t *ents = json_object();
    if (first.e > first.s)
        json_object_set_new(ents, "host", json_stringn(r->norm + first.s, first.e - first.s));
    for (size_t e = 0; known && e < in->nentities; e++) {
        if (e == in->ent_host || !it->accepts[e] || !r->slots[e].set)
            continue;
        json_object_set_new(ents, in->entities[e].name,
                            slot_json(r, &in->entities[e], &r->slots[e]));
    }
    json_t *corr = json_array();
    for (size_t i = 0; i < r->ntok; i++) {
        const struct tok *t = &r->tok[i];
        if (t->corrected)
            json_array_append_new(corr, json_pack("{s:s%,s:s}", "from", r->raw + t->roff,
                                                  (size_t)t->rlen, "to", in->words[t->id].text));
    }

    json_t *res = json_object();
    json_object_set_new(res, "intent", json_string(known ? it->name : "unknown"));
    json_object_set_new(
        res, "category",
        json_string(bt_intents__category_name(known ? it->category : BT_INTENTS__CAT_UNKNOWN)));
    json_object_set_new(res, "confidence", json_real(rounded(conf)));
    json_object_set_new(res, "entities", ents);
    json_object_set_new(res, "targets", targets);
    json_object_set_new(res, "unresolved", unresolved);
    json_object_set_new(res, "corrections", corr);
    json_object_set_new(res, "normalized", json_stringn(r->norm, r->nlen));
    json_object_set_new(res, "question", json_boolean(known && it->question));
    json_object_set_new(res, "suggestions", known ? json_array() : suggestions(r));
    json_object_set_new(res, "match", match_json(r, &best, known));
    pcre2_match_data_free(r->md);
    free(r);
    return res;
}
