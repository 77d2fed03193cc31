/*
 * catalog.c - read and check the intent catalog (config/intents/NAME.yaml)
 * and compile it.
 *
 * Two passes over the files. The first reads what every intent may refer to:
 * entity declarations, synonyms, pattern fragments and vocabulary words (from
 * any file, so the order of files does not matter). The second compiles the
 * entities' extractor patterns and the intents. Every problem is reported
 * with file:line and the key; nothing stops at the first problem.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bot/util.h"
#include "intents/intents_int.h"

/* Backtracking budget of one pattern on one request. Patterns in the
 * shipped catalog need a few hundred; a pathological one stops here, counts
 * as "no match" and costs a few milliseconds at most. */
#define CAT_MATCH_LIMIT 100000u
/* Interpreter only (JIT ignores it): nested backtracking depth and heap. */
#define CAT_DEPTH_LIMIT 2000u
#define CAT_HEAP_LIMIT_KIB 4096u
/* Fragments may use fragments, this deep. */
#define CAT_MAX_NESTING 8
/* An expanded pattern larger than this is refused. */
#define CAT_MAX_PATTERN (256u * 1024u)
#define CAT_MAX_WEIGHT 10.0

static const char *const category_names[BT_INTENTS__CAT_COUNT] = {
    "asset_management", "monitoring",  "automation", "configuration",
    "troubleshooting",  "information", "unknown",
};

const char *bt_intents__category_name(int category)
{
    if (category < 0 || category >= BT_INTENTS__CAT_COUNT)
        return "unknown";
    return category_names[category];
}

struct fragment {
    const char *name; /* borrowed from the document */
    const char *text;
    const bt_yaml_doc *doc;
    const json_t *node;
};

struct decl {
    size_t entity;
    const bt_yaml_doc *doc;
    const json_t *node; /* the entity's mapping */
};

struct seen_intent {
    const char *name;
    const char *file;
    int line;
};

struct loader {
    bt_intents *in;
    bt_diag *d;
    size_t errors; /* problems reported by this file's own checks */
    struct fragment *frags;
    size_t nfrags, capfrags;
    struct decl *decls;
    size_t ndecls, capdecls;
    struct seen_intent *seen;
    size_t nseen, capseen;
};

static void problem(struct loader *L, const bt_yaml_doc *doc, const json_t *node, const char *key,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Report at the line of node (a string, list or mapping), with key. */
static void problem(struct loader *L, const bt_yaml_doc *doc, const json_t *node, const char *key,
                    const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line = bt_yaml_line(doc, node);
    bt_diag_add(L->d, bt_yaml_name(doc), line, key, "%s", msg);
    L->errors++;
}

/* Report at obj[key]'s line. */
static void problem_at(struct loader *L, const bt_yaml_doc *doc, const json_t *obj, const char *key,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void problem_at(struct loader *L, const bt_yaml_doc *doc, const json_t *obj, const char *key,
                       const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bt_diag_at(L->d, doc, obj, key, "%s", msg);
    L->errors++;
}

/* Lowercase letters, digits and _, starting with a letter. */
static bool is_name(const char *s)
{
    if (!s || !(*s >= 'a' && *s <= 'z'))
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return false;
    return true;
}

/* Optional boolean obj[key]; true when absent or valid. */
static bool check_bool(struct loader *L, const bt_yaml_doc *doc, const json_t *obj, const char *key,
                       bool *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return true;
    if (!json_is_boolean(v)) {
        problem_at(L, doc, obj, key, "must be true or false");
        return false;
    }
    *out = json_is_true(v);
    return true;
}

/* A list of non-empty strings at obj[key] (optional unless required).
 * Returns the array or NULL (absent or wrong; reported). */
static json_t *string_list(struct loader *L, const bt_yaml_doc *doc, const json_t *obj,
                           const char *key, bool required)
{
    size_t before = bt_diag_count(L->d);
    json_t *arr = bt_check_array(L->d, doc, obj, key, required);
    if (bt_diag_count(L->d) != before)
        L->errors++;
    if (!arr)
        return NULL;
    size_t i;
    json_t *v;
    bool ok = true;
    json_array_foreach(arr, i, v)
    {
        if (!json_is_string(v) || json_string_length(v) == 0) {
            problem_at(L, doc, obj, key, "item %zu must be a non-empty string (quote it)", i + 1);
            ok = false;
        }
    }
    if (required && json_array_size(arr) == 0) {
        problem_at(L, doc, obj, key, "must list at least one item");
        ok = false;
    }
    return ok ? arr : NULL;
}

/* Index of the entity named name[0..n), or -1. */
static long find_entity(const bt_intents *in, const char *name, size_t n)
{
    for (size_t i = 0; i < in->nentities; i++)
        if (strlen(in->entities[i].name) == n && memcmp(in->entities[i].name, name, n) == 0)
            return (long)i;
    return -1;
}

/* Append an entity; returns its index. */
static size_t entity_new(bt_intents *in, const char *name, bool builtin)
{
    if (in->nentities == in->capentities) {
        in->capentities = in->capentities ? in->capentities * 2 : 32;
        in->entities = bt_realloc(in->entities, in->capentities * sizeof *in->entities);
    }
    struct bt_intents__entity *e = &in->entities[in->nentities];
    memset(e, 0, sizeof *e);
    e->name = bt_strdup(name);
    e->builtin = builtin;
    return in->nentities++;
}

/* Index of canonical value `value` of e, added if new. */
static uint32_t entity_value(struct bt_intents__entity *e, const char *value)
{
    for (size_t i = 0; i < e->nvalues; i++)
        if (strcmp(e->values[i], value) == 0)
            return (uint32_t)i;
    if (e->nvalues == e->capvalues) {
        e->capvalues = e->capvalues ? e->capvalues * 2 : 16;
        e->values = bt_realloc(e->values, e->capvalues * sizeof *e->values);
    }
    e->values[e->nvalues] = bt_strdup(value);
    return (uint32_t)e->nvalues++;
}

/* Add alias text for value v of entity e. The alias is stored normalised
 * (as the tokenizer writes it) so captured text compares with it directly.
 * Returns false when the text holds no word or too many. */
static bool entity_alias(bt_intents *in, struct bt_intents__entity *e, const char *text, uint32_t v)
{
    struct bt_intents__phrase ph;
    if (!bt_intents__phrase_add(in, text, BT_INTENTS__W_TARGET, BT_INTENTS__CLS_VALUE, &ph))
        return false;
    bt_buf b = BT_BUF_INIT(4096);
    for (uint32_t k = 0; k < ph.n; k++) {
        if (k)
            bt_buf_puts(&b, " ");
        bt_buf_puts(&b, in->words[in->pool[ph.at + k]].text);
    }
    char *norm = bt_buf_steal(&b);
    for (size_t i = 0; i < e->naliases; i++) {
        if (strcmp(e->aliases[i].text, norm) == 0) {
            free(norm);
            return true; /* first value wins; the catalog check reports conflicts */
        }
    }
    if (e->naliases == e->capaliases) {
        e->capaliases = e->capaliases ? e->capaliases * 2 : 16;
        e->aliases = bt_realloc(e->aliases, e->capaliases * sizeof *e->aliases);
    }
    struct bt_intents__alias *a = &e->aliases[e->naliases++];
    a->text = norm;
    a->words = ph;
    a->value = v;
    return true;
}

/* ---- pass 1: entities, synonyms, fragments, vocabulary ----------------- */

static const char *const entity_keys[] = {"values",   "scan",     "closed",    "case", "reject",
                                          "not_host", "patterns", "inventory", NULL};

/* Declare entity `name` from its definition def (a mapping or empty) in
 * ents: values and aliases now, extractor patterns in pass 2. */
static void read_entity(struct loader *L, const bt_yaml_doc *doc, const json_t *ents,
                        const char *name, const json_t *def)
{
    bt_intents *in = L->in;
    if (!is_name(name)) {
        problem_at(L, doc, ents, name, "entity names are lowercase letters, digits and _");
        return;
    }
    long existing = find_entity(in, name, strlen(name));
    if (existing >= 0) {
        problem_at(L, doc, ents, name,
                   in->entities[existing].builtin ? "entity '%s' is built in"
                                                  : "entity '%s' is declared twice",
                   name);
        return;
    }
    if (def && !json_is_null(def) && !json_is_object(def)) {
        problem_at(L, doc, ents, name, "must be a mapping (or empty)");
        return;
    }
    size_t idx = entity_new(in, name, false);
    if (strcmp(name, "service") == 0)
        in->ent_service = (long)idx;
    if (!json_is_object(def))
        return;
    size_t before = bt_diag_count(L->d);
    bt_check_keys(L->d, doc, def, entity_keys);
    L->errors += bt_diag_count(L->d) - before;

    struct bt_intents__entity *e = &in->entities[idx];
    check_bool(L, doc, def, "scan", &e->scan);
    check_bool(L, doc, def, "closed", &e->closed);
    check_bool(L, doc, def, "not_host", &e->not_host);
    const char *inv = bt_check_string(L->d, doc, def, "inventory", false);
    if (inv)
        e->inventory = bt_strdup(inv);
    else if (json_object_get(def, "inventory"))
        L->errors++;
    json_t *cs = json_object_get(def, "case");
    if (cs) {
        if (json_is_string(cs) && strcmp(json_string_value(cs), "keep") == 0)
            e->keep_case = true;
        else if (!(json_is_string(cs) && strcmp(json_string_value(cs), "lower") == 0))
            problem_at(L, doc, def, "case", "must be keep or lower");
    }
    json_t *reject = string_list(L, doc, def, "reject", false);
    if (reject) {
        e->reject = bt_calloc(json_array_size(reject) + 1, sizeof *e->reject);
        size_t i;
        json_t *v;
        json_array_foreach(reject, i, v)
        {
            char *low = bt_lower(json_string_value(v));
            e->reject[e->nreject++] = low;
            bt_intents__word_add(in, low, strlen(low), 0, BT_INTENTS__CLS_NONE);
        }
    }
    json_t *values = json_object_get(def, "values");
    if (json_is_array(values)) {
        size_t i;
        json_t *v;
        json_array_foreach(values, i, v)
        {
            if (!json_is_string(v) || json_string_length(v) == 0) {
                problem(L, doc, values, "values", "item %zu must be a non-empty string", i + 1);
                continue;
            }
            uint32_t vi = entity_value(e, json_string_value(v));
            if (!entity_alias(in, e, json_string_value(v), vi))
                problem(L, doc, v, "values", "'%s' must be 1 to %d words", json_string_value(v),
                        BT_INTENTS__MAX_PHRASE);
        }
    } else if (json_is_object(values)) {
        const char *canon;
        json_t *aliases;
        json_object_foreach(values, canon, aliases)
        {
            uint32_t vi = entity_value(e, canon);
            if (!entity_alias(in, e, canon, vi))
                problem_at(L, doc, values, canon, "'%s' must be 1 to %d words", canon,
                           BT_INTENTS__MAX_PHRASE);
            if (!json_is_array(aliases)) {
                problem_at(L, doc, values, canon, "must be a list of other ways to say it");
                continue;
            }
            size_t i;
            json_t *a;
            json_array_foreach(aliases, i, a)
            {
                if (!json_is_string(a) || !entity_alias(in, e, json_string_value(a), vi))
                    problem(L, doc, aliases, canon, "item %zu must be a string of 1 to %d words",
                            i + 1, BT_INTENTS__MAX_PHRASE);
            }
        }
    } else if (values && !json_is_null(values)) {
        problem_at(L, doc, def, "values", "must be a list or a mapping value -> [aliases]");
    }
    if (e->closed && e->nvalues == 0 && !e->inventory)
        problem_at(L, doc, def, "closed", "a closed entity needs values");
    if (e->scan && e->nvalues == 0 && !e->inventory)
        problem_at(L, doc, def, "scan", "scanning needs values to look for");
    if (L->ndecls == L->capdecls) {
        L->capdecls = L->capdecls ? L->capdecls * 2 : 32;
        L->decls = bt_realloc(L->decls, L->capdecls * sizeof *L->decls);
    }
    L->decls[L->ndecls++] = (struct decl){idx, doc, def};
}

/* synonyms: canonical word -> [variant words or phrases]. A variant belongs
 * to one canonical word only. */
static void read_synonyms(struct loader *L, const bt_yaml_doc *doc, const json_t *syns)
{
    bt_intents *in = L->in;
    const char *canon;
    json_t *list;
    json_object_foreach((json_t *)syns, canon, list)
    {
        struct bt_intents__phrase cp;
        if (!bt_intents__phrase_add(in, canon, BT_INTENTS__W_TARGET, BT_INTENTS__CLS_WORD, &cp) ||
            cp.n != 1) {
            problem_at(L, doc, syns, canon, "the canonical word must be one word");
            continue;
        }
        int32_t cid = in->pool[cp.at];
        if (!json_is_array(list)) {
            problem_at(L, doc, syns, canon, "must be a list of words or phrases");
            continue;
        }
        size_t i;
        json_t *v;
        json_array_foreach(list, i, v)
        {
            struct bt_intents__phrase vp;
            if (!json_is_string(v) ||
                !bt_intents__phrase_add(in, json_string_value(v), BT_INTENTS__W_TARGET,
                                        BT_INTENTS__CLS_WORD, &vp)) {
                problem(L, doc, list, canon, "item %zu must be a string of 1 to %d words", i + 1,
                        BT_INTENTS__MAX_PHRASE);
                continue;
            }
            if (vp.n == 1 && in->pool[vp.at] == cid)
                continue;
            int32_t first = in->pool[vp.at];
            bool dup = false;
            for (int32_t s = in->words[first].syn; s >= 0; s = in->syns[s].next) {
                const struct bt_intents__synonym *o = &in->syns[s];
                if (o->variant.n == vp.n && memcmp(in->pool + o->variant.at, in->pool + vp.at,
                                                   vp.n * sizeof(int32_t)) == 0) {
                    if (o->canon != cid)
                        problem(L, doc, v, canon, "'%s' is already a synonym of '%s'",
                                json_string_value(v), in->words[o->canon].text);
                    dup = true;
                }
            }
            if (dup)
                continue;
            if (in->nsyns == in->capsyns) {
                in->capsyns = in->capsyns ? in->capsyns * 2 : 64;
                in->syns = bt_realloc(in->syns, in->capsyns * sizeof *in->syns);
            }
            in->syns[in->nsyns] = (struct bt_intents__synonym){vp, cid, in->words[first].syn};
            in->words[first].syn = (int32_t)in->nsyns++;
        }
    }
}

/* fragments: name -> regex text, expanded where a pattern says {name}. */
static void read_fragments(struct loader *L, const bt_yaml_doc *doc, const json_t *frags)
{
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)frags, name, v)
    {
        if (!is_name(name) || strcmp(name, "assets") == 0 || strcmp(name, "values") == 0 ||
            strcmp(name, "syn") == 0) {
            problem_at(L, doc, frags, name,
                       "fragment names are lowercase letters, digits and _ (not assets, values, "
                       "syn)");
            continue;
        }
        if (!json_is_string(v)) {
            problem_at(L, doc, frags, name, "must be a string (quote it)");
            continue;
        }
        bool dup = false;
        for (size_t i = 0; i < L->nfrags; i++)
            if (strcmp(L->frags[i].name, name) == 0)
                dup = true;
        if (dup) {
            problem_at(L, doc, frags, name, "fragment '%s' is defined twice", name);
            continue;
        }
        if (L->nfrags == L->capfrags) {
            L->capfrags = L->capfrags ? L->capfrags * 2 : 32;
            L->frags = bt_realloc(L->frags, L->capfrags * sizeof *L->frags);
        }
        L->frags[L->nfrags++] = (struct fragment){name, json_string_value(v), doc, v};
    }
}

static const char *const vocabulary_keys[] = {"words", "known", "stopwords", NULL};

/* vocabulary: words (correction targets), known (never corrected) and
 * stopwords (never corrected, ignored when comparing with examples). */
static void read_vocabulary(struct loader *L, const bt_yaml_doc *doc, const json_t *voc)
{
    size_t before = bt_diag_count(L->d);
    bt_check_keys(L->d, doc, voc, vocabulary_keys);
    L->errors += bt_diag_count(L->d) - before;
    /* words: correction targets; known: never corrected; stopwords: never
     * corrected and left out when comparing requests with examples */
    static const struct {
        const char *key;
        unsigned flags;
        int cls;
    } lists[] = {{"words", BT_INTENTS__W_TARGET, BT_INTENTS__CLS_WORD},
                 {"known", 0, BT_INTENTS__CLS_NONE},
                 {"stopwords", BT_INTENTS__W_STOP, BT_INTENTS__CLS_NONE}};
    for (size_t k = 0; k < sizeof lists / sizeof lists[0]; k++) {
        json_t *arr = string_list(L, doc, voc, lists[k].key, false);
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v)
        {
            struct bt_intents__phrase ph;
            if (!bt_intents__phrase_add(L->in, json_string_value(v), lists[k].flags, lists[k].cls,
                                        &ph))
                problem(L, doc, arr, lists[k].key, "item %zu has no word", i + 1);
        }
    }
}

static const char *const top_keys[] = {"intents",   "entities",   "synonyms",
                                       "fragments", "vocabulary", NULL};

/* Pass 1 over one file: everything except the intents. */
static void pass1(struct loader *L, const bt_yaml_doc *doc)
{
    json_t *root = bt_yaml_root(doc);
    if (!json_is_object(root)) {
        bt_diag_add(L->d, bt_yaml_name(doc), 1, NULL, "the file must hold a mapping");
        L->errors++;
        return;
    }
    size_t before = bt_diag_count(L->d);
    bt_check_keys(L->d, doc, root, top_keys);
    json_t *ents = bt_check_object(L->d, doc, root, "entities", false);
    json_t *syns = bt_check_object(L->d, doc, root, "synonyms", false);
    json_t *frags = bt_check_object(L->d, doc, root, "fragments", false);
    json_t *voc = bt_check_object(L->d, doc, root, "vocabulary", false);
    L->errors += bt_diag_count(L->d) - before;
    if (voc)
        read_vocabulary(L, doc, voc);
    if (syns)
        read_synonyms(L, doc, syns);
    if (frags)
        read_fragments(L, doc, frags);
    if (ents) {
        const char *name;
        json_t *def;
        json_object_foreach(ents, name, def)
        {
            read_entity(L, doc, ents, name, def);
        }
    }
}

/* ---- pattern fragments and compiling ---------------------------------- */

/* Append s as a literal to a regex: letters, digits and non-ASCII bytes as
 * they are, a space as \s+, everything else escaped. */
static void put_literal(bt_buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c >= 0x80) {
            bt_buf_append(b, s, 1);
        } else if (c == ' ') {
            bt_buf_puts(b, "\\s+");
        } else {
            char esc[2] = {'\\', (char)c};
            bt_buf_append(b, esc, 2);
        }
    }
}

/* qsort: longer strings first, then alphabetical. */
static int by_length_desc(const void *a, const void *b)
{
    size_t la = strlen(*(const char *const *)a), lb = strlen(*(const char *const *)b);
    if (la != lb)
        return la < lb ? 1 : -1;
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* (?:a|b|c) of literal strings, longest first so the longest one matches;
 * (?!) when there is none. */
static void put_alternation(bt_buf *b, const char **items, size_t n)
{
    if (n == 0) {
        bt_buf_puts(b, "(?!)");
        return;
    }
    qsort(items, n, sizeof *items, by_length_desc);
    bt_buf_puts(b, "(?:");
    for (size_t i = 0; i < n; i++) {
        if (i)
            bt_buf_puts(b, "|");
        put_literal(b, items[i]);
    }
    bt_buf_puts(b, ")");
}

/* Length of a fragment reference at p ("{name}" or "{kind:arg}"), or 0. */
static size_t macro_len(const char *p)
{
    if (*p != '{' || !(p[1] >= 'a' && p[1] <= 'z'))
        return 0;
    size_t i = 1;
    bool colon = false;
    for (; p[i] && p[i] != '}'; i++) {
        char c = p[i];
        if (c == ':' && !colon) {
            colon = true;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return 0;
    }
    return p[i] == '}' ? i + 1 : 0;
}

static bool expand(struct loader *L, const char *src, bt_buf *out, int depth, char *err,
                   size_t errlen);

static bool expand_macro(struct loader *L, const char *name, size_t n, bt_buf *out, int depth,
                         char *err, size_t errlen)
{
    bt_intents *in = L->in;
    char buf[128];
    if (n >= sizeof buf) {
        bt_fmt(err, errlen, "fragment name too long");
        return false;
    }
    memcpy(buf, name, n);
    buf[n] = '\0';
    if (strcmp(buf, "assets") == 0) {
        const char **items = bt_calloc(3 * in->nassets + 1, sizeof *items);
        size_t k = 0;
        for (size_t i = 0; i < in->nassets; i++) {
            items[k++] = in->assets[i].name;
            if (in->assets[i].hostname)
                items[k++] = in->assets[i].hostname;
            if (in->assets[i].ip)
                items[k++] = in->assets[i].ip;
        }
        put_alternation(out, items, k);
        free(items);
        return true;
    }
    if (strncmp(buf, "values:", 7) == 0) {
        long e = find_entity(in, buf + 7, strlen(buf + 7));
        if (e < 0) {
            bt_fmt(err, errlen, "{%s}: no entity '%s'", buf, buf + 7);
            return false;
        }
        const struct bt_intents__entity *E = &in->entities[e];
        const char **items = bt_calloc(E->naliases + 1, sizeof *items);
        for (size_t i = 0; i < E->naliases; i++)
            items[i] = E->aliases[i].text;
        put_alternation(out, items, E->naliases);
        free(items);
        return true;
    }
    if (strncmp(buf, "syn:", 4) == 0) {
        int32_t cid = bt_intents__word_find(in, buf + 4, strlen(buf + 4));
        const char **items = bt_calloc(in->nsyns + 1, sizeof *items);
        char **owned = bt_calloc(in->nsyns + 1, sizeof *owned);
        size_t k = 0;
        if (cid >= 0)
            items[k++] = in->words[cid].text;
        for (size_t i = 0; cid >= 0 && i < in->nsyns; i++) {
            if (in->syns[i].canon != cid)
                continue;
            bt_buf t = BT_BUF_INIT(4096);
            for (uint32_t w = 0; w < in->syns[i].variant.n; w++) {
                if (w)
                    bt_buf_puts(&t, " ");
                bt_buf_puts(&t, in->words[in->pool[in->syns[i].variant.at + w]].text);
            }
            owned[k] = bt_buf_steal(&t);
            items[k] = owned[k];
            k++;
        }
        bool ok = k > 1;
        if (ok)
            put_alternation(out, items, k);
        else
            bt_fmt(err, errlen, "{%s}: '%s' has no synonyms", buf, buf + 4);
        for (size_t i = 0; i < k; i++)
            free(owned[i]);
        free(owned);
        free(items);
        return ok;
    }
    for (size_t i = 0; i < L->nfrags; i++) {
        if (strcmp(L->frags[i].name, buf) != 0)
            continue;
        if (depth >= CAT_MAX_NESTING) {
            bt_fmt(err, errlen, "fragments nest deeper than %d (does {%s} use itself?)",
                   CAT_MAX_NESTING, buf);
            return false;
        }
        bt_buf_puts(out, "(?:");
        if (!expand(L, L->frags[i].text, out, depth + 1, err, errlen))
            return false;
        bt_buf_puts(out, ")");
        return true;
    }
    bt_fmt(err, errlen, "unknown fragment {%s}", buf);
    return false;
}

/* Copy src to out, replacing fragment references. Not inside a character
 * class and not as the argument of an escape such as \p{L} or \x{41}. */
static bool expand(struct loader *L, const char *src, bt_buf *out, int depth, char *err,
                   size_t errlen)
{
    const char *p = src;
    while (*p) {
        if (*p == '\\') {
            bt_buf_append(out, p, p[1] ? 2 : 1);
            if (!p[1])
                break;
            /* the escapes that take a braced argument */
            bool braced = strchr("pPxogkN", p[1]) != NULL;
            p += 2;
            if (braced && *p == '{') {
                const char *q = strchr(p, '}');
                size_t n = q ? (size_t)(q - p) + 1 : strlen(p);
                bt_buf_append(out, p, n);
                p += n;
            }
        } else if (*p == '[') {
            const char *q = p + 1;
            if (*q == '^')
                q++;
            if (*q == ']')
                q++;
            while (*q && *q != ']') {
                if (*q == '\\' && q[1])
                    q += 2;
                else if (*q == '[' && q[1] == ':' && strstr(q + 2, ":]"))
                    q = strstr(q + 2, ":]") + 2;
                else
                    q++;
            }
            if (*q == ']')
                q++;
            bt_buf_append(out, p, (size_t)(q - p));
            p = q;
        } else {
            size_t m = macro_len(p);
            if (m) {
                if (!expand_macro(L, p + 1, m - 2, out, depth, err, errlen))
                    return false;
                p += m;
            } else {
                bt_buf_append(out, p, 1);
                p++;
            }
        }
        if (out->len >= CAT_MAX_PATTERN) {
            bt_fmt(err, errlen, "longer than %u bytes once fragments are expanded",
                   CAT_MAX_PATTERN);
            return false;
        }
    }
    return true;
}

/* Expand and compile src. what names it in messages ("pattern 2 of
 * service_status"); node is where it was written. NULL on error (reported). */
static pcre2_code *compile(struct loader *L, const char *src, const bt_yaml_doc *doc,
                           const json_t *node, const char *key, const char *what)
{
    bt_buf b = BT_BUF_INIT(CAT_MAX_PATTERN + 4096);
    char err[256] = "";
    if (!expand(L, src, &b, 0, err, sizeof err)) {
        problem(L, doc, node, key, "cannot compile %s: %s", what, err);
        bt_buf_free(&b);
        return NULL;
    }
    char *re_text = bt_buf_steal(&b);
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)re_text, strlen(re_text),
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_CASELESS | PCRE2_DUPNAMES |
                                       PCRE2_NEVER_BACKSLASH_C,
                                   &code, &off, L->in->cctx);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        bool expanded = strcmp(re_text, src) != 0;
        problem(L, doc, node, key, "cannot compile %s: %s at offset %zu%s", what, (char *)msg,
                (size_t)off, expanded ? " (of the pattern with its fragments expanded)" : "");
        free(re_text);
        return NULL;
    }
    free(re_text);
    /* Without JIT (unsupported CPU) pcre2_match interprets the pattern under
     * the same match limit, plus the depth and heap limits. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    uint32_t cap = 0;
    pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &cap);
    if (cap + 1 > L->in->ovec_pairs)
        L->in->ovec_pairs = cap + 1;
    return re;
}

/* Visit the named groups of re: fn(group number, name). */
static void each_name(const pcre2_code *re, void (*fn)(void *, uint32_t, const char *), void *ctx)
{
    uint32_t count = 0, size = 0;
    PCRE2_SPTR table = NULL;
    pcre2_pattern_info(re, PCRE2_INFO_NAMECOUNT, &count);
    pcre2_pattern_info(re, PCRE2_INFO_NAMEENTRYSIZE, &size);
    pcre2_pattern_info(re, PCRE2_INFO_NAMETABLE, &table);
    for (uint32_t i = 0; i < count; i++) {
        const unsigned char *entry = table + (size_t)i * size;
        uint32_t group = ((uint32_t)entry[0] << 8) | entry[1];
        fn(ctx, group, (const char *)entry + 2);
    }
}

struct group_ctx {
    struct loader *L;
    const bt_yaml_doc *doc;
    const json_t *node;
    const char *key, *what;
    struct bt_intents__pattern *pat;  /* intent pattern, or */
    struct bt_intents__extractor *ex; /* entity extractor */
    size_t entity;                    /* the extractor's entity */
    uint8_t *accepts;
};

static void map_group(void *vctx, uint32_t group, const char *name)
{
    struct group_ctx *c = vctx;
    bt_intents *in = c->L->in;
    if (name[0] == '_')
        return; /* helper group, not an entity */
    long e = find_entity(in, name, strlen(name));
    if (c->ex) {
        if (e == (long)c->entity)
            c->ex->group = group;
        else
            problem(c->L, c->doc, c->node, c->key,
                    "%s: group '%s' must be named '%s' (or start with _)", c->what, name,
                    in->entities[c->entity].name);
        return;
    }
    if (e < 0) {
        problem(c->L, c->doc, c->node, c->key, "%s: group '%s' is not a declared entity", c->what,
                name);
        return;
    }
    c->pat->group_entity[group] = (int32_t)e;
    c->accepts[e] = 1;
}

/* ---- pass 2: entity extractors ---------------------------------------- */

static const char *const extractor_keys[] = {"pattern", "add", NULL};

/* Compile the extractor patterns of one declared entity. */
static void compile_extractors(struct loader *L, const struct decl *dc)
{
    bt_intents *in = L->in;
    struct bt_intents__entity *e = &in->entities[dc->entity];
    size_t before = bt_diag_count(L->d);
    json_t *pats = bt_check_array(L->d, dc->doc, dc->node, "patterns", false);
    L->errors += bt_diag_count(L->d) - before;
    if (!pats)
        return;
    e->ex = bt_calloc(json_array_size(pats) + 1, sizeof *e->ex);
    size_t i;
    json_t *p;
    json_array_foreach(pats, i, p)
    {
        const char *src = NULL;
        long long add = 0;
        bool has_add = false;
        if (json_is_string(p)) {
            src = json_string_value(p);
        } else if (json_is_object(p)) {
            size_t mark = bt_diag_count(L->d);
            bt_check_keys(L->d, dc->doc, p, extractor_keys);
            src = bt_check_string(L->d, dc->doc, p, "pattern", true);
            has_add = bt_check_int(L->d, dc->doc, p, "add", false, -1000000, 1000000, &add);
            L->errors += bt_diag_count(L->d) - mark;
        } else {
            problem(L, dc->doc, pats, "patterns", "item %zu must be a string or {pattern, add}",
                    i + 1);
        }
        if (!src)
            continue;
        char what[160];
        bt_fmt(what, sizeof what, "pattern %zu of entity %s", i + 1, e->name);
        pcre2_code *re = compile(L, src, dc->doc, p, "patterns", what);
        if (!re)
            continue;
        struct bt_intents__extractor *x = &e->ex[e->nex++];
        x->re = re;
        x->add = (long)add;
        x->has_add = has_add;
        x->group = 0;
        struct group_ctx c = {L, dc->doc, p, "patterns", what, NULL, x, dc->entity, NULL};
        each_name(re, map_group, &c);
        if (x->group == 0)
            problem(L, dc->doc, p, "patterns", "%s: needs a group named (?<%s>...)", what, e->name);
    }
}

/* ---- pass 2: intents -------------------------------------------------- */

static const char *const intent_keys[] = {
    "name", "category", "description", "examples", "patterns", "unless",   "keywords", "entities",
    "plan", "targets",  "requires",    "ask",      "help",     "question", NULL};
static const char *const pattern_keys[] = {"pattern", "weight", NULL};
static const char *const step_keys[] = {"id", "tool", "inputs", "depends_on", "per_target", NULL};

/* A new zeroed intent at the end of the catalog. */
static struct bt_intents__intent *intent_new(bt_intents *in)
{
    if (in->nintents == in->capintents) {
        in->capintents = in->capintents ? in->capintents * 2 : 32;
        in->intents = bt_realloc(in->intents, in->capintents * sizeof *in->intents);
    }
    struct bt_intents__intent *it = &in->intents[in->nintents++];
    memset(it, 0, sizeof *it);
    it->accepts = bt_calloc(in->nentities + 1, 1);
    return it;
}

/* An entity name used by requires/ask/entities/templates: mark it taken. */
static bool use_entity(struct loader *L, struct bt_intents__intent *it, const char *name, size_t n)
{
    long e = find_entity(L->in, name, n);
    if (e < 0)
        return false;
    it->accepts[e] = 1;
    return true;
}

/* Check the {placeholders} of one plan input template; entities used are
 * marked as taken by the intent. */
static void check_template(struct loader *L, const bt_yaml_doc *doc, const json_t *inputs,
                           const char *key, const char *tmpl, struct bt_intents__intent *it)
{
    for (const char *p = strchr(tmpl, '{'); p; p = strchr(p + 1, '{')) {
        const char *q = strchr(p, '}');
        if (!q) {
            problem_at(L, doc, inputs, key, "unclosed '{' in '%s'", tmpl);
            return;
        }
        size_t n = (size_t)(q - p - 1);
        const char *name = p + 1;
        if ((n == 6 && memcmp(name, "target", 6) == 0) ||
            (n == 9 && memcmp(name, "target.ip", 9) == 0))
            continue;
        if (!use_entity(L, it, name, n))
            problem_at(L, doc, inputs, key, "'{%.*s}' is neither an entity nor target or target.ip",
                       (int)n, name);
    }
}

/* Check the steps of a plan: keys, unique ids, templates, depends_on naming
 * earlier steps (so a plan never has a cycle). Tools are the pipeline's
 * check. */
static void check_plan(struct loader *L, const bt_yaml_doc *doc, const json_t *plan,
                       struct bt_intents__intent *it)
{
    size_t nsteps = json_array_size(plan);
    const char **ids = bt_calloc(nsteps + 1, sizeof *ids);
    size_t i;
    json_t *step;
    json_array_foreach(plan, i, step)
    {
        if (!json_is_object(step)) {
            problem(L, doc, plan, "plan", "step %zu must be a mapping", i + 1);
            continue;
        }
        size_t before = bt_diag_count(L->d);
        bt_check_keys(L->d, doc, step, step_keys);
        const char *id = bt_check_string(L->d, doc, step, "id", true);
        bt_check_string(L->d, doc, step, "tool", true);
        json_t *inputs = bt_check_object(L->d, doc, step, "inputs", false);
        json_t *deps = bt_check_array(L->d, doc, step, "depends_on", false);
        L->errors += bt_diag_count(L->d) - before;
        bool per_target = false;
        check_bool(L, doc, step, "per_target", &per_target);
        if (id) {
            for (size_t k = 0; k < i; k++)
                if (ids[k] && strcmp(ids[k], id) == 0)
                    problem_at(L, doc, step, "id", "step id '%s' is used twice", id);
            ids[i] = id;
        }
        const char *key;
        json_t *v;
        json_object_foreach(inputs, key, v)
        {
            if (!json_is_string(v))
                problem_at(L, doc, inputs, key, "must be a string template (quote it)");
            else
                check_template(L, doc, inputs, key, json_string_value(v), it);
        }
        size_t k;
        json_t *dep;
        json_array_foreach(deps, k, dep)
        {
            bool found = false;
            for (size_t j = 0; json_is_string(dep) && j < i; j++)
                if (ids[j] && strcmp(ids[j], json_string_value(dep)) == 0)
                    found = true;
            if (!found)
                problem(L, doc, deps, "depends_on",
                        "item %zu must name an earlier step of this plan", k + 1);
        }
    }
    free(ids);
}

/* Compile the patterns of intent it; their named groups become entities
 * the intent takes. */
static void compile_patterns(struct loader *L, const bt_yaml_doc *doc, const json_t *pats,
                             struct bt_intents__intent *it)
{
    it->pats = bt_calloc(json_array_size(pats) + 1, sizeof *it->pats);
    size_t i;
    json_t *p;
    json_array_foreach(pats, i, p)
    {
        const char *src = NULL;
        double weight = 1.0;
        if (json_is_string(p)) {
            src = json_string_value(p);
        } else if (json_is_object(p)) {
            size_t before = bt_diag_count(L->d);
            bt_check_keys(L->d, doc, p, pattern_keys);
            src = bt_check_string(L->d, doc, p, "pattern", true);
            L->errors += bt_diag_count(L->d) - before;
            json_t *w = json_object_get(p, "weight");
            if (w && (!json_is_number(w) || json_number_value(w) <= 0 ||
                      json_number_value(w) > CAT_MAX_WEIGHT))
                problem_at(L, doc, p, "weight", "must be a number above 0 and at most %g",
                           CAT_MAX_WEIGHT);
            else if (w)
                weight = json_number_value(w);
        } else {
            problem(L, doc, pats, "patterns", "item %zu must be a string or {pattern, weight}",
                    i + 1);
        }
        if (!src)
            continue;
        char what[160];
        bt_fmt(what, sizeof what, "pattern %zu of %s", i + 1, it->name);
        pcre2_code *re = compile(L, src, doc, p, "patterns", what);
        if (!re)
            continue;
        struct bt_intents__pattern *pat = &it->pats[it->npats++];
        pat->re = re;
        pat->weight = weight;
        uint32_t cap = 0;
        pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &cap);
        pat->ngroups = cap + 1;
        pat->group_entity = bt_calloc(pat->ngroups, sizeof *pat->group_entity);
        for (uint32_t g = 0; g < pat->ngroups; g++)
            pat->group_entity[g] = -1;
        struct group_ctx c = {L, doc, p, "patterns", what, pat, NULL, 0, it->accepts};
        each_name(re, map_group, &c);
    }
}

/* kws is the keyword mapping as written (for lines); copy the same mapping
 * in the intent's own definition, whose key strings the keywords borrow. */
/* unless: patterns that rule the intent out ("don't restart ..."). Their
 * groups capture nothing. */
static void compile_unless(struct loader *L, const bt_yaml_doc *doc, const json_t *list,
                           struct bt_intents__intent *it)
{
    it->unless = bt_calloc(json_array_size(list) + 1, sizeof *it->unless);
    size_t i;
    json_t *p;
    json_array_foreach(list, i, p)
    {
        if (!json_is_string(p)) {
            problem(L, doc, list, "unless", "item %zu must be a string", i + 1);
            continue;
        }
        char what[160];
        bt_fmt(what, sizeof what, "unless pattern %zu of %s", i + 1, it->name);
        pcre2_code *re = compile(L, json_string_value(p), doc, p, "unless", what);
        if (re)
            it->unless[it->nunless++] = re;
    }
}

static void read_keywords(struct loader *L, const bt_yaml_doc *doc, const json_t *kws, json_t *copy,
                          struct bt_intents__intent *it)
{
    bt_intents *in = L->in;
    it->kws = bt_calloc(json_object_size(kws) + 1, sizeof *it->kws);
    const char *text;
    json_t *w;
    json_object_foreach((json_t *)kws, text, w)
    {
        const char *own = json_object_iter_key(json_object_iter_at(copy, text));
        if (!json_is_number(w) || json_number_value(w) <= 0 ||
            json_number_value(w) > CAT_MAX_WEIGHT) {
            problem_at(L, doc, kws, text, "the weight must be a number above 0 and at most %g",
                       CAT_MAX_WEIGHT);
            continue;
        }
        struct bt_intents__phrase ph;
        if (!bt_intents__phrase_add(in, text, BT_INTENTS__W_TARGET, BT_INTENTS__CLS_WORD, &ph)) {
            problem_at(L, doc, kws, text, "must be 1 to %d words", BT_INTENTS__MAX_PHRASE);
            continue;
        }
        /* Keywords compare with the request after synonyms are replaced by
         * their canonical word, so they are stored canonical too. Two
         * keywords that become the same count once, with the larger weight. */
        int32_t canon[BT_INTENTS__MAX_PHRASE];
        size_t n = bt_intents__canon(in, in->pool + ph.at, ph.n, canon);
        memcpy(in->pool + ph.at, canon, n * sizeof *canon);
        ph.n = (uint32_t)n;
        bool merged = false;
        for (size_t k = 0; k < it->nkws; k++) {
            struct bt_intents__keyword *o = &it->kws[k];
            if (o->words.n == ph.n &&
                memcmp(in->pool + o->words.at, in->pool + ph.at, n * sizeof(int32_t)) == 0) {
                if (json_number_value(w) > o->weight)
                    o->weight = json_number_value(w);
                merged = true;
            }
        }
        if (!merged)
            it->kws[it->nkws++] = (struct bt_intents__keyword){ph, json_number_value(w), own};
    }
}

/* Every word of a free text (description, help) becomes a known word:
 * never corrected, never a correction target. */
static void add_known_words(bt_intents *in, const char *text)
{
    if (!text)
        return;
    size_t len = strlen(text);
    struct bt_intents__rawtok *toks = bt_calloc(len / 2 + 2, sizeof *toks);
    char *buf = bt_malloc(len + 8);
    size_t n = bt_intents__tokenize(text, len, toks, len / 2 + 2, buf, len + 8);
    for (size_t i = 0; i < n; i++) {
        const char *w = buf + toks[i].boff;
        size_t wl = toks[i].blen;
        if (toks[i].qopen) {
            w++;
            wl--;
        }
        if (toks[i].qclose && wl > 0)
            wl--;
        if (wl)
            bt_intents__word_add(in, w, wl, 0, BT_INTENTS__CLS_NONE);
    }
    free(buf);
    free(toks);
}

static int cmp_id(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Record an example for suggestions: its canonical content words, sorted
 * and unique. Its words become known words. */
static void add_example(bt_intents *in, uint32_t intent, const char *text)
{
    struct bt_intents__rawtok toks[64];
    char buf[1024];
    size_t len = strlen(text);
    if (len >= sizeof buf)
        len = sizeof buf - 1;
    size_t n = bt_intents__tokenize(text, len, toks, 64, buf, sizeof buf);
    int32_t ids[64], canon[64];
    for (size_t i = 0; i < n; i++) {
        const char *w = buf + toks[i].boff;
        size_t wl = toks[i].blen;
        if (toks[i].qopen) {
            w++;
            wl--;
        }
        if (toks[i].qclose && wl > 0)
            wl--;
        ids[i] = wl ? bt_intents__word_add(in, w, wl, 0, BT_INTENTS__CLS_NONE) : -1;
    }
    size_t m = bt_intents__canon(in, ids, n, canon);
    size_t k = 0;
    for (size_t i = 0; i < m; i++)
        if (canon[i] >= 0 && !(in->words[canon[i]].flags & BT_INTENTS__W_STOP))
            canon[k++] = canon[i];
    qsort(canon, k, sizeof *canon, cmp_id);
    size_t u = 0;
    for (size_t i = 0; i < k; i++)
        if (u == 0 || canon[u - 1] != canon[i])
            canon[u++] = canon[i];
    if (in->nexamples == in->capexamples) {
        in->capexamples = in->capexamples ? in->capexamples * 2 : 128;
        in->examples = bt_realloc(in->examples, in->capexamples * sizeof *in->examples);
    }
    struct bt_intents__example *ex = &in->examples[in->nexamples++];
    ex->intent = intent;
    ex->text = text;
    ex->words.n = (uint32_t)u;
    ex->words.at = (uint32_t)in->npool;
    /* the pool grows through phrase_add only; append by hand here */
    if (in->npool + u > in->cappool) {
        while (in->npool + u > in->cappool)
            in->cappool = in->cappool ? in->cappool * 2 : 1024;
        in->pool = bt_realloc(in->pool, in->cappool * sizeof *in->pool);
    }
    memcpy(in->pool + in->npool, canon, u * sizeof *canon);
    in->npool += u;
}

/* Check and compile one intent (item pos of list). It is added to the
 * catalog even when it has problems; the catalog then fails as a whole. */
static void read_intent(struct loader *L, const bt_yaml_doc *doc, const json_t *list, size_t pos,
                        const json_t *def)
{
    bt_intents *in = L->in;
    if (!json_is_object(def)) {
        problem(L, doc, list, "intents", "item %zu must be a mapping", pos + 1);
        return;
    }
    size_t before = bt_diag_count(L->d);
    bt_check_keys(L->d, doc, def, intent_keys);
    const char *name = bt_check_string(L->d, doc, def, "name", true);
    const char *cat = bt_check_string(L->d, doc, def, "category", true);
    bt_check_string(L->d, doc, def, "description", true);
    bt_check_string(L->d, doc, def, "help", false);
    const char *targets = bt_check_string(L->d, doc, def, "targets", false);
    json_t *pats = bt_check_array(L->d, doc, def, "patterns", false);
    json_t *unless = bt_check_array(L->d, doc, def, "unless", false);
    json_t *kws = bt_check_object(L->d, doc, def, "keywords", false);
    json_t *plan = bt_check_array(L->d, doc, def, "plan", false);
    json_t *ask = bt_check_object(L->d, doc, def, "ask", false);
    L->errors += bt_diag_count(L->d) - before;
    json_t *examples = string_list(L, doc, def, "examples", true);
    json_t *requires = string_list(L, doc, def, "requires", false);
    json_t *ents = string_list(L, doc, def, "entities", false);

    if (name && !is_name(name)) {
        problem_at(L, doc, def, "name", "'%s': intent names are lowercase letters, digits and _",
                   name);
    } else if (name && strcmp(name, "unknown") == 0 && cat && strcmp(cat, "unknown") != 0) {
        problem_at(L, doc, def, "category", "the intent 'unknown' must have category unknown");
    } else if (name) {
        for (size_t i = 0; i < L->nseen; i++) {
            if (strcmp(L->seen[i].name, name) == 0)
                problem_at(L, doc, def, "name", "duplicate intent name '%s' (first at %s:%d)", name,
                           L->seen[i].file, L->seen[i].line);
        }
        if (L->nseen == L->capseen) {
            L->capseen = L->capseen ? L->capseen * 2 : 32;
            L->seen = bt_realloc(L->seen, L->capseen * sizeof *L->seen);
        }
        L->seen[L->nseen++] =
            (struct seen_intent){name, bt_yaml_name(doc), bt_yaml_key_line(doc, def, "name")};
    }
    int category = -1;
    for (int c = 0; cat && c < BT_INTENTS__CAT_COUNT; c++)
        if (strcmp(cat, category_names[c]) == 0)
            category = c;
    if (cat && category < 0)
        problem_at(L, doc, def, "category",
                   "'%s' is not one of asset_management, monitoring, automation, configuration, "
                   "troubleshooting, information, unknown",
                   cat);
    if (targets && strcmp(targets, "required") != 0 && strcmp(targets, "optional") != 0 &&
        strcmp(targets, "none") != 0)
        problem_at(L, doc, def, "targets", "must be required, optional or none");
    bool has_plan = json_object_get(def, "plan") != NULL;
    if (category == BT_INTENTS__CAT_INFORMATION || category == BT_INTENTS__CAT_UNKNOWN) {
        if (has_plan)
            problem_at(L, doc, def, "plan", "%s intents answer by themselves and have no plan",
                       category_names[category]);
    } else if (category >= 0 && !has_plan) {
        problem_at(L, doc, def, "plan", "required, missing (%s intents need a plan)",
                   category_names[category]);
    }
    if (!name)
        return;

    struct bt_intents__intent *it = intent_new(in);
    it->def = json_deep_copy(def);
    it->name = json_string_value(json_object_get(it->def, "name"));
    it->category = category < 0 ? BT_INTENTS__CAT_UNKNOWN : category;
    check_bool(L, doc, def, "question", &it->question);
    /* Text the examples borrow lives in the copy. */
    json_t *my_examples = json_object_get(it->def, "examples");
    if (examples) {
        size_t i;
        json_t *v;
        json_array_foreach(my_examples, i, v)
        {
            add_example(in, (uint32_t)(in->nintents - 1), json_string_value(v));
        }
    }
    add_known_words(in, json_string_value(json_object_get(def, "description")));
    add_known_words(in, json_string_value(json_object_get(def, "help")));
    if (pats)
        compile_patterns(L, doc, pats, it);
    if (unless)
        compile_unless(L, doc, unless, it);
    if (kws)
        read_keywords(L, doc, kws, json_object_get(it->def, "keywords"), it);
    size_t i;
    json_t *v;
    json_array_foreach(requires, i, v)
    {
        if (!use_entity(L, it, json_string_value(v), json_string_length(v)))
            problem(L, doc, requires, "requires", "'%s' is not a declared entity",
                    json_string_value(v));
    }
    json_array_foreach(ents, i, v)
    {
        if (!use_entity(L, it, json_string_value(v), json_string_length(v)))
            problem(L, doc, ents, "entities", "'%s' is not a declared entity",
                    json_string_value(v));
    }
    const char *k;
    json_object_foreach(ask, k, v)
    {
        if (find_entity(in, k, strlen(k)) < 0)
            problem_at(L, doc, ask, k, "'%s' is not a declared entity", k);
        else if (!json_is_string(v))
            problem_at(L, doc, ask, k, "the question must be a string");
    }
    if (plan)
        check_plan(L, doc, plan, it);
    if (it->question && !it->accepts[in->ent_topic])
        problem_at(L, doc, def, "question",
                   "a question intent needs a pattern with a (?<topic>...) group");
}

/* Pass 2 over one file: its intents. */
static void pass2(struct loader *L, const bt_yaml_doc *doc)
{
    json_t *root = bt_yaml_root(doc);
    if (!json_is_object(root))
        return;
    json_t *list = json_object_get(root, "intents");
    if (!json_is_array(list)) {
        if (list && !json_is_null(list)) {
            /* bt_check_object in pass 1 does not look at intents */
            problem_at(L, doc, root, "intents", "must be a list of intents");
        }
        return;
    }
    size_t i;
    json_t *def;
    json_array_foreach(list, i, def)
    {
        read_intent(L, doc, list, i, def);
    }
}

/* ---- assets ----------------------------------------------------------- */

static char *lower_or_null(const json_t *v)
{
    return json_is_string(v) && json_string_length(v) ? bt_lower(json_string_value(v)) : NULL;
}

/* Copy the names, hostnames and IPs of the assets and make them words
 * that resolve to their asset. Entries without a name are skipped (the
 * inventory check reports them). */
static void read_assets(bt_intents *in, const json_t *assets)
{
    size_t n = json_is_array(assets) ? json_array_size(assets) : 0;
    in->assets = bt_calloc(n + 1, sizeof *in->assets);
    for (size_t i = 0; i < n; i++) {
        const json_t *a = json_array_get(assets, i);
        char *name = lower_or_null(json_object_get(a, "name"));
        if (!name)
            continue; /* the inventory check reports it */
        struct bt_intents__asset *as = &in->assets[in->nassets];
        as->name = name;
        as->hostname = lower_or_null(json_object_get(a, "hostname"));
        as->ip = lower_or_null(json_object_get(a, "ip"));
        const char *forms[3] = {as->name, as->hostname, as->ip};
        for (size_t k = 0; k < 3; k++) {
            if (!forms[k])
                continue;
            /* Names and hostnames are correction targets ("wbe-01"); an IP
             * is never corrected. The first asset to claim a form keeps it. */
            unsigned flags = k < 2 ? BT_INTENTS__W_TARGET : 0;
            int32_t id =
                bt_intents__word_add(in, forms[k], strlen(forms[k]), flags, BT_INTENTS__CLS_HOST);
            if (in->words[id].asset < 0)
                in->words[id].asset = (int32_t)in->nassets;
        }
        in->nassets++;
    }
}

/* Add one inventory value (as the inventory spells it) to entity e. */
static void inventory_value(bt_intents *in, struct bt_intents__entity *e, const json_t *v)
{
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > BT_INTENTS__MAX_WORD)
        return;
    char *low = bt_lower(json_string_value(v));
    bool known = false;
    for (size_t j = 0; j < e->naliases; j++)
        if (strcmp(e->aliases[j].text, low) == 0)
            known = true;
    if (!known)
        entity_alias(in, e, low, entity_value(e, json_string_value(v)));
    free(low);
}

/* Entities with `inventory: FIELD` know every value of that field (a string
 * or a list of strings) in the assets: services, datacenters, ... */
static void add_inventory_values(bt_intents *in, const json_t *assets)
{
    for (size_t k = 0; k < in->nentities; k++) {
        struct bt_intents__entity *e = &in->entities[k];
        if (!e->inventory || !json_is_array(assets))
            continue;
        size_t i;
        json_t *a;
        json_array_foreach(assets, i, a)
        {
            json_t *f = json_object_get(a, e->inventory);
            if (json_is_array(f)) {
                size_t j;
                json_t *v;
                json_array_foreach(f, j, v) inventory_value(in, e, v);
            } else {
                inventory_value(in, e, f);
            }
        }
    }
}

/* ---- entry points ----------------------------------------------------- */

bool bt_intents__load(bt_intents *in, const bt_config *cfg, const json_t *assets, bt_diag *d)
{
    struct loader L = {.in = in, .d = d};
    in->ent_host = entity_new(in, "host", true);
    in->ent_topic = entity_new(in, "topic", true);
    in->ent_service = -1;
    in->ovec_pairs = 1;
    in->cctx = pcre2_compile_context_create(NULL);
    in->mctx = pcre2_match_context_create(NULL);
    pcre2_set_match_limit(in->mctx, CAT_MATCH_LIMIT);
    pcre2_set_depth_limit(in->mctx, CAT_DEPTH_LIMIT);
    pcre2_set_heap_limit(in->mctx, CAT_HEAP_LIMIT_KIB);

    read_assets(in, assets);
    size_t ndocs = cfg ? bt_config_intent_count(cfg) : 0;
    if (ndocs == 0) {
        bt_diag_add(d, cfg ? bt_config_dir(cfg) : NULL, 0, "intents", "no intent files");
        L.errors++;
    }
    for (size_t i = 0; i < ndocs; i++)
        pass1(&L, bt_config_intent_doc(cfg, i));
    add_inventory_values(in, assets);
    for (size_t i = 0; i < L.ndecls; i++)
        compile_extractors(&L, &L.decls[i]);
    for (size_t i = 0; i < ndocs; i++)
        pass2(&L, bt_config_intent_doc(cfg, i));
    if (ndocs && in->nintents == 0) {
        bt_diag_add(d, bt_config_dir(cfg), 0, "intents", "the catalog has no intents");
        L.errors++;
    }
    /* Intents allocate their accepts arrays with the entity count known in
     * pass 2, which is final: entities come from pass 1 only. */
    bt_intents__targets_build(in);
    free(L.frags);
    free(L.decls);
    free(L.seen);
    return L.errors == 0;
}

static void free_entity(struct bt_intents__entity *e)
{
    free(e->name);
    free(e->inventory);
    for (size_t i = 0; i < e->nvalues; i++)
        free(e->values[i]);
    free(e->values);
    for (size_t i = 0; i < e->naliases; i++)
        free(e->aliases[i].text);
    free(e->aliases);
    for (size_t i = 0; i < e->nex; i++)
        pcre2_code_free(e->ex[i].re);
    free(e->ex);
    for (size_t i = 0; i < e->nreject; i++)
        free(e->reject[i]);
    free(e->reject);
}

void bt_intents__release(bt_intents *in)
{
    for (size_t i = 0; i < in->nwords; i++)
        free(in->words[i].text);
    free(in->words);
    free(in->wtab);
    free(in->pool);
    free(in->syns);
    free(in->targets);
    for (size_t i = 0; i < in->nentities; i++)
        free_entity(&in->entities[i]);
    free(in->entities);
    for (size_t i = 0; i < in->nintents; i++) {
        struct bt_intents__intent *it = &in->intents[i];
        for (size_t k = 0; k < it->npats; k++) {
            pcre2_code_free(it->pats[k].re);
            free(it->pats[k].group_entity);
        }
        free(it->pats);
        for (size_t k = 0; k < it->nunless; k++)
            pcre2_code_free(it->unless[k]);
        free(it->unless);
        free(it->kws);
        free(it->accepts);
        json_decref(it->def);
    }
    free(in->intents);
    free(in->examples);
    for (size_t i = 0; i < in->nassets; i++) {
        free(in->assets[i].name);
        free(in->assets[i].hostname);
        free(in->assets[i].ip);
    }
    free(in->assets);
    pcre2_compile_context_free(in->cctx);
    pcre2_match_context_free(in->mctx);
}
