/*
 * vocab.c - the catalog's vocabulary: the tokenizer every text goes through,
 * interned words (what each one is: a catalog word, an entity value, an
 * inventory name), phrases of words, synonym canonicalisation and typo
 * correction (restricted Damerau-Levenshtein against the correction targets).
 */
#include <stdlib.h>
#include <string.h>

#include "bot/util.h"
#include "intents/intents_int.h"

/* ---- tokenizer -------------------------------------------------------- */

/* Width of the whitespace character at s[i], or 0. Besides ASCII space this
 * knows the no-break space and the Unicode spaces U+2000..U+200A that chat
 * clients paste. */
static size_t space_width(const unsigned char *s, size_t i, size_t len)
{
    unsigned c = s[i];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f')
        return 1;
    if (c == 0xC2 && i + 1 < len && s[i + 1] == 0xA0)
        return 2;
    if (c == 0xE2 && i + 2 < len && s[i + 1] == 0x80 && s[i + 2] >= 0x80 && s[i + 2] <= 0x8A)
        return 3;
    return 0;
}

/* Punctuation stripped from the start of a token. */
static bool lead_punct(unsigned char c)
{
    return c == '(' || c == '[' || c == '{' || c == '<';
}

/* Punctuation stripped from the end of a token (a dot is handled apart). */
static bool trail_punct(unsigned char c)
{
    return c == ')' || c == ']' || c == '}' || c == '>' || c == ',' || c == ';' || c == '!' ||
           c == '?' || c == ':';
}

/* "10.20.1." keeps its dot: a partial IP is a search prefix. */
static bool partial_ip(const unsigned char *s, size_t n)
{
    size_t dots = 0;
    if (n == 0 || s[0] < '0' || s[0] > '9')
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '.')
            dots++;
        else if (s[i] < '0' || s[i] > '9')
            return false;
    }
    return dots >= 2;
}

/* Typographic quotes (U+2018, U+2019, U+201C, U+201D) at s[j]: their width. */
static size_t smart_quote(const unsigned char *s, size_t j, size_t end)
{
    if (s[j] == 0xE2 && j + 2 < end && s[j + 1] == 0x80 &&
        (s[j + 2] == 0x98 || s[j + 2] == 0x99 || s[j + 2] == 0x9C || s[j + 2] == 0x9D))
        return 3;
    return 0;
}

size_t bt_intents__tokenize(const char *text, size_t len, struct bt_intents__rawtok *toks,
                            size_t max, char *buf, size_t bufmax)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t n = 0, bpos = 0, i = 0;
    while (i < len && n < max) {
        size_t w;
        while (i < len && (w = space_width(s, i, len)) > 0)
            i += w;
        if (i >= len)
            break;
        size_t a = i;
        while (i < len && space_width(s, i, len) == 0)
            i++;
        size_t b = i;
        while (a < b && lead_punct(s[a]))
            a++;
        for (;;) {
            while (a < b && trail_punct(s[b - 1]))
                b--;
            if (a < b && s[b - 1] == '.' && !partial_ip(s + a, b - a)) {
                b--;
                continue;
            }
            break;
        }
        if (a == b)
            continue;
        size_t start = bpos;
        bool verbatim = true;
        for (size_t j = a; j < b; j++) {
            if (bpos + 1 >= bufmax)
                return n;
            size_t q = smart_quote(s, j, b);
            unsigned char c = s[j];
            if (q) {
                buf[bpos++] = '\'';
                j += q - 1;
                verbatim = false;
            } else if (c == '"' || c == '`') {
                buf[bpos++] = '\'';
            } else {
                buf[bpos++] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
            }
        }
        size_t blen = bpos - start;
        if (blen == 1 && buf[start] == '\'') {
            bpos = start; /* a lone quote mark says nothing */
            continue;
        }
        struct bt_intents__rawtok *t = &toks[n++];
        t->off = (uint32_t)a;
        t->len = (uint32_t)(b - a);
        t->boff = (uint32_t)start;
        t->blen = (uint32_t)blen;
        t->verbatim = verbatim;
        t->qopen = buf[start] == '\'';
        t->qclose = buf[bpos - 1] == '\'' && blen > 1;
    }
    return n;
}

/* ---- words ------------------------------------------------------------ */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

int32_t bt_intents__word_find(const bt_intents *in, const char *s, size_t n)
{
    if (!in->wtabsize)
        return -1;
    size_t mask = in->wtabsize - 1;
    size_t i = (size_t)hash_bytes(s, n) & mask;
    for (size_t probes = 0; probes < in->wtabsize && in->wtab[i]; probes++) {
        const struct bt_intents__word *w = &in->words[in->wtab[i] - 1];
        if (w->len == n && memcmp(w->text, s, n) == 0)
            return in->wtab[i] - 1;
        i = (i + 1) & mask;
    }
    return -1;
}

/* Put word id in the hash table (which has room). */
static void wtab_insert(bt_intents *in, int32_t id)
{
    const struct bt_intents__word *w = &in->words[id];
    size_t mask = in->wtabsize - 1;
    size_t i = (size_t)hash_bytes(w->text, w->len) & mask;
    while (in->wtab[i])
        i = (i + 1) & mask;
    in->wtab[i] = id + 1;
}

int32_t bt_intents__word_add(bt_intents *in, const char *s, size_t n, unsigned flags, int cls)
{
    int32_t id = bt_intents__word_find(in, s, n);
    if (id >= 0) {
        struct bt_intents__word *w = &in->words[id];
        w->flags |= (uint8_t)flags;
        if ((flags & BT_INTENTS__W_TARGET) && cls < w->cls)
            w->cls = (uint8_t)cls;
        return id;
    }
    if (in->nwords == in->capwords) {
        in->capwords = in->capwords ? in->capwords * 2 : 512;
        in->words = bt_realloc(in->words, in->capwords * sizeof *in->words);
    }
    if ((in->nwords + 1) * 2 > in->wtabsize) {
        free(in->wtab);
        in->wtabsize = in->wtabsize ? in->wtabsize * 2 : 1024;
        in->wtab = bt_calloc(in->wtabsize, sizeof *in->wtab);
        for (size_t k = 0; k < in->nwords; k++)
            wtab_insert(in, (int32_t)k);
    }
    id = (int32_t)in->nwords++;
    struct bt_intents__word *w = &in->words[id];
    w->text = bt_strndup(s, n);
    w->len = (uint32_t)n;
    w->flags = (uint8_t)flags;
    w->cls = (uint8_t)((flags & BT_INTENTS__W_TARGET) ? cls : BT_INTENTS__CLS_NONE);
    w->asset = -1;
    w->syn = -1;
    wtab_insert(in, id);
    return id;
}

/* ---- phrases ---------------------------------------------------------- */

static uint32_t pool_push(bt_intents *in, const int32_t *ids, size_t n)
{
    if (in->npool + n > in->cappool) {
        while (in->npool + n > in->cappool)
            in->cappool = in->cappool ? in->cappool * 2 : 1024;
        in->pool = bt_realloc(in->pool, in->cappool * sizeof *in->pool);
    }
    uint32_t at = (uint32_t)in->npool;
    memcpy(in->pool + in->npool, ids, n * sizeof *ids);
    in->npool += n;
    return at;
}

bool bt_intents__phrase_add(bt_intents *in, const char *text, unsigned flags, int cls,
                            struct bt_intents__phrase *out)
{
    struct bt_intents__rawtok toks[BT_INTENTS__MAX_PHRASE + 1];
    char buf[512];
    size_t len = strlen(text);
    if (len >= sizeof buf)
        return false;
    size_t n = bt_intents__tokenize(text, len, toks, BT_INTENTS__MAX_PHRASE + 1, buf, sizeof buf);
    if (n == 0 || n > BT_INTENTS__MAX_PHRASE)
        return false;
    int32_t ids[BT_INTENTS__MAX_PHRASE];
    for (size_t i = 0; i < n; i++) {
        const char *w = buf + toks[i].boff;
        size_t wl = toks[i].blen;
        if (toks[i].qopen) {
            w++;
            wl--;
        }
        if (toks[i].qclose && wl > 0)
            wl--;
        if (wl == 0)
            return false;
        ids[i] = bt_intents__word_add(in, w, wl, flags, cls);
    }
    out->at = pool_push(in, ids, n);
    out->n = (uint32_t)n;
    return true;
}

/* Does phrase p occur in seq[0..n) at i? */
static bool phrase_at(const bt_intents *in, struct bt_intents__phrase p, const int32_t *seq,
                      size_t n, size_t i)
{
    if (i + p.n > n)
        return false;
    for (uint32_t k = 0; k < p.n; k++)
        if (seq[i + k] != in->pool[p.at + k])
            return false;
    return true;
}

size_t bt_intents__canon(const bt_intents *in, const int32_t *ids, size_t n, int32_t *out)
{
    size_t k = 0, i = 0;
    while (i < n) {
        int32_t id = ids[i];
        uint32_t best_len = 0;
        int32_t best = -1;
        if (id >= 0) {
            for (int32_t s = in->words[id].syn; s >= 0; s = in->syns[s].next) {
                const struct bt_intents__synonym *sy = &in->syns[s];
                if (sy->variant.n > best_len && phrase_at(in, sy->variant, ids, n, i)) {
                    best_len = sy->variant.n;
                    best = sy->canon;
                }
            }
        }
        if (best_len) {
            out[k++] = best;
            i += best_len;
        } else {
            out[k++] = id;
            i++;
        }
    }
    return k;
}

long bt_intents__phrase_find(const bt_intents *in, struct bt_intents__phrase p, const int32_t *seq,
                             size_t n)
{
    for (size_t i = 0; i + p.n <= n; i++)
        if (phrase_at(in, p, seq, n, i))
            return (long)i;
    return -1;
}

/* ---- typo correction -------------------------------------------------- */

void bt_intents__targets_build(bt_intents *in)
{
    size_t count[BT_INTENTS__MAX_WORD + 2] = {0};
    for (size_t i = 0; i < in->nwords; i++) {
        const struct bt_intents__word *w = &in->words[i];
        if ((w->flags & BT_INTENTS__W_TARGET) && w->len >= 4 && w->len <= BT_INTENTS__MAX_WORD)
            count[w->len]++;
    }
    size_t total = 0;
    for (size_t l = 0; l <= BT_INTENTS__MAX_WORD + 1; l++) {
        in->tstart[l] = total;
        total += l <= BT_INTENTS__MAX_WORD ? count[l] : 0;
    }
    free(in->targets);
    in->targets = bt_calloc(total ? total : 1, sizeof *in->targets);
    in->ntargets = total;
    size_t fill[BT_INTENTS__MAX_WORD + 2];
    memcpy(fill, in->tstart, sizeof fill);
    /* Word ids ascend, so each length bucket lists words in the order they
     * were added: the tie-break "added first" is the bucket order. */
    for (size_t i = 0; i < in->nwords; i++) {
        const struct bt_intents__word *w = &in->words[i];
        if ((w->flags & BT_INTENTS__W_TARGET) && w->len >= 4 && w->len <= BT_INTENTS__MAX_WORD)
            in->targets[fill[w->len]++] = (int32_t)i;
    }
}

/* Optimal string alignment distance between a and b, or limit + 1 when it
 * is larger than limit. Both are at most BT_INTENTS__MAX_WORD bytes. */
static unsigned osa_distance(const char *a, size_t na, const char *b, size_t nb, unsigned limit)
{
    unsigned rows[3][BT_INTENTS__MAX_WORD + 1];
    unsigned *pp = rows[0], *prev = rows[1], *cur = rows[2];
    for (size_t j = 0; j <= nb; j++)
        prev[j] = (unsigned)j;
    for (size_t i = 1; i <= na; i++) {
        cur[0] = (unsigned)i;
        unsigned rowmin = cur[0];
        for (size_t j = 1; j <= nb; j++) {
            unsigned cost = a[i - 1] == b[j - 1] ? 0 : 1;
            unsigned v = prev[j] + 1;
            if (cur[j - 1] + 1 < v)
                v = cur[j - 1] + 1;
            if (prev[j - 1] + cost < v)
                v = prev[j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && pp[j - 2] + 1 < v)
                v = pp[j - 2] + 1;
            cur[j] = v;
            if (v < rowmin)
                rowmin = v;
        }
        if (rowmin > limit)
            return limit + 1;
        unsigned *t = pp;
        pp = prev;
        prev = cur;
        cur = t;
    }
    return prev[nb] <= limit ? prev[nb] : limit + 1;
}

static bool same_digits(const char *a, size_t na, const char *b, size_t nb)
{
    size_t i = 0, j = 0;
    for (;;) {
        while (i < na && (a[i] < '0' || a[i] > '9'))
            i++;
        while (j < nb && (b[j] < '0' || b[j] > '9'))
            j++;
        if (i == na || j == nb)
            return i == na && j == nb;
        if (a[i] != b[j])
            return false;
        i++;
        j++;
    }
}

/* One is the other with letters added at the end: a plural or a verb form
 * ("works", "restarted", "windows"), not a typo. */
static bool prefix_pair(const char *a, size_t na, const char *b, size_t nb)
{
    size_t m = na < nb ? na : nb;
    return memcmp(a, b, m) == 0;
}

/* a and b (same length) differ only by two adjacent letters swapped. */
static bool swapped(const char *a, const char *b, size_t n)
{
    size_t i = 0;
    while (i < n && a[i] == b[i])
        i++;
    return i + 1 < n && a[i] == b[i + 1] && a[i + 1] == b[i] &&
           memcmp(a + i + 2, b + i + 2, n - i - 2) == 0;
}

int32_t bt_intents__correct(const bt_intents *in, const char *s, size_t n)
{
    if (n < 4 || n > BT_INTENTS__MAX_WORD)
        return -1;
    unsigned maxd = n <= 6 ? 1 : 2;
    int32_t best = -1;
    unsigned best_d = maxd + 1;
    size_t lo = n - maxd < 4 ? 4 : n - maxd;
    size_t hi = n + maxd > BT_INTENTS__MAX_WORD ? BT_INTENTS__MAX_WORD : n + maxd;
    for (size_t l = lo; l <= hi; l++) {
        for (size_t k = in->tstart[l]; k < in->tstart[l + 1]; k++) {
            int32_t id = in->targets[k];
            const struct bt_intents__word *w = &in->words[id];
            bool first_ok = w->text[0] == s[0] || (w->text[0] == s[1] && w->text[1] == s[0]);
            if (!first_ok || !same_digits(s, n, w->text, w->len))
                continue;
            if (prefix_pair(s, n, w->text, w->len))
                continue;
            /* Four-letter words are too often other real words one letter
             * apart (book/boot, life/live): only a swap or a letter missing
             * inside the word counts. */
            if (n == 4 && w->len == 4 && !swapped(s, w->text, n))
                continue;
            unsigned d = osa_distance(s, n, w->text, w->len, maxd);
            if (d > maxd)
                continue;
            if (best < 0 || d < best_d || (d == best_d && w->cls < in->words[best].cls)) {
                best = id;
                best_d = d;
            }
        }
    }
    return best;
}

/* ---- host-like words -------------------------------------------------- */

static bool dotted_quad(const char *s, size_t n)
{
    size_t groups = 0, digits = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= '0' && s[i] <= '9') {
            if (++digits > 3)
                return false;
        } else if (s[i] == '.' && digits > 0) {
            groups++;
            digits = 0;
        } else {
            return false;
        }
    }
    return groups == 3 && digits > 0;
}

bool bt_intents__hostlike(const char *s, size_t n)
{
    if (dotted_quad(s, n))
        return true;
    if (n < 3 || s[0] < 'a' || s[0] > 'z')
        return false;
    bool digit = false, sep = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9') {
            digit = true;
        } else if (c == '-' || c == '.') {
            if (i + 1 == n || s[i + 1] == '-' || s[i + 1] == '.')
                return false;
            sep = true;
        } else if (c < 'a' || c > 'z') {
            return false;
        }
    }
    return digit && sep;
}
