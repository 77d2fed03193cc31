/*
 * intents_int.h - what the files of intents/ share: the compiled catalog and
 * the helpers each file gives the others. Never included from another folder.
 *
 *   intents.c   public API (new, free, count, get, classify)
 *   catalog.c   reading and checking config/intents/NAME.yaml, compiling patterns
 *   vocab.c     words, phrases, synonyms, typo correction
 *   match.c     normalisation, scoring, entities, hosts: the decision
 */
#ifndef BT_INTENTS_INT_H
#define BT_INTENTS_INT_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "bot/conf.h"
#include "intents/intents.h"

/* Longest request classified, in bytes. */
#define BT_INTENTS__MAX_INPUT 4096
/* Tokens in a request: at most one per two bytes of input. */
#define BT_INTENTS__MAX_TOKENS (BT_INTENTS__MAX_INPUT / 2 + 2)
/* The normalised text: corrections may lengthen a token by two bytes. */
#define BT_INTENTS__NORM_MAX (2 * BT_INTENTS__MAX_INPUT + 64)
/* Longest word the typo corrector looks at. */
#define BT_INTENTS__MAX_WORD 64
/* Longest phrase (keyword, synonym, alias) in words. */
#define BT_INTENTS__MAX_PHRASE 8

enum bt_intents__category {
    BT_INTENTS__CAT_ASSET,
    BT_INTENTS__CAT_MONITORING,
    BT_INTENTS__CAT_AUTOMATION,
    BT_INTENTS__CAT_CONFIGURATION,
    BT_INTENTS__CAT_TROUBLESHOOTING,
    BT_INTENTS__CAT_INFORMATION,
    BT_INTENTS__CAT_UNKNOWN,
    BT_INTENTS__CAT_COUNT
};

/* Word flags. */
#define BT_INTENTS__W_TARGET 1u /* a typo may be corrected to this word */
#define BT_INTENTS__W_STOP 2u   /* common word: ignored when comparing requests */

/* Correction preference when two candidates are equally near (lower wins). */
#define BT_INTENTS__CLS_WORD 0  /* verbs and nouns of the catalog */
#define BT_INTENTS__CLS_VALUE 1 /* entity values: services, roles, ... */
#define BT_INTENTS__CLS_HOST 2  /* inventory names */
#define BT_INTENTS__CLS_NONE 3  /* known, never a correction target */

struct bt_intents__word {
    char *text;
    uint32_t len;
    uint8_t flags;
    uint8_t cls;
    int32_t asset; /* the asset this word names (name, hostname, IP), or -1 */
    int32_t syn;   /* first synonym whose variant starts with this word, or -1 */
};

/* A phrase is n word ids at in->pool[at]. */
struct bt_intents__phrase {
    uint32_t at;
    uint32_t n;
};

struct bt_intents__synonym {
    struct bt_intents__phrase variant;
    int32_t canon; /* word id */
    int32_t next;  /* next synonym whose variant starts with the same word */
};

struct bt_intents__alias {
    char *text; /* normalised: lowercase, single spaces */
    struct bt_intents__phrase words;
    uint32_t value; /* index into the entity's values */
};

struct bt_intents__extractor {
    pcre2_code *re;
    uint32_t group; /* the group named like the entity */
    long add;       /* added to a numeric value (more than 32 GB -> 33) */
    bool has_add;
};

struct bt_intents__entity {
    char *name;
    bool builtin;    /* host, topic */
    bool scan;       /* look for known values anywhere in the request */
    bool closed;     /* only known values are accepted */
    bool keep_case;  /* values keep the case the user typed */
    bool not_host;   /* a value naming an inventory asset is refused */
    char *inventory; /* asset field whose values are known values, or NULL */
    char **values;   /* canonical values */
    size_t nvalues, capvalues;
    struct bt_intents__alias *aliases;
    size_t naliases, capaliases;
    struct bt_intents__extractor *ex;
    size_t nex;
    char **reject; /* words never accepted as a value */
    size_t nreject;
};

struct bt_intents__pattern {
    pcre2_code *re;
    double weight;
    int32_t *group_entity; /* capture group number -> entity index or -1 */
    uint32_t ngroups;      /* capture groups + 1 */
};

struct bt_intents__keyword {
    struct bt_intents__phrase words; /* canonical word ids */
    double weight;
    const char *text; /* as written (borrowed from def) */
};

struct bt_intents__intent {
    const char *name; /* borrowed from def */
    json_t *def;      /* the definition as written (own copy) */
    int category;
    bool question;
    struct bt_intents__pattern *pats;
    size_t npats;
    pcre2_code **unless; /* a request any of these match is never this intent */
    size_t nunless;
    struct bt_intents__keyword *kws;
    size_t nkws;
    uint8_t *accepts; /* per entity: the intent takes this entity */
};

struct bt_intents__example {
    uint32_t intent;
    const char *text;                /* borrowed from the intent's def */
    struct bt_intents__phrase words; /* canonical content word ids, sorted */
};

struct bt_intents__asset {
    char *name, *hostname, *ip;
};

struct bt_intents {
    /* vocabulary */
    struct bt_intents__word *words;
    size_t nwords, capwords;
    int32_t *wtab; /* open addressing: word id + 1, 0 = empty */
    size_t wtabsize;
    int32_t *pool; /* phrase word ids */
    size_t npool, cappool;
    struct bt_intents__synonym *syns;
    size_t nsyns, capsyns;
    int32_t *targets; /* correction targets sorted by length */
    size_t ntargets;
    size_t tstart[BT_INTENTS__MAX_WORD + 2]; /* first target of each length */

    struct bt_intents__entity *entities;
    size_t nentities, capentities;
    size_t ent_host, ent_topic;
    long ent_service; /* -1 when the catalog declares no `service` entity:
                       * a service name is never taken for a host */

    struct bt_intents__intent *intents;
    size_t nintents, capintents;
    struct bt_intents__example *examples;
    size_t nexamples, capexamples;
    struct bt_intents__asset *assets;
    size_t nassets;

    pcre2_compile_context *cctx;
    pcre2_match_context *mctx;
    uint32_t ovec_pairs; /* the most capture groups of any pattern, + 1 */
};

/* ---- vocab.c ---------------------------------------------------------- */

/* One token of a text as the tokenizer sees it: bytes [off, off+len) of the
 * original, lowercased into the caller's buffer at [boff, boff+len). */
struct bt_intents__rawtok {
    uint32_t off, len;   /* in the original text, punctuation stripped */
    uint32_t boff, blen; /* in the lowercased buffer */
    bool verbatim;       /* buffer bytes are the original bytes lowercased */
    bool qopen, qclose;  /* starts / ends with a quote */
};

/* Split text into tokens: whitespace separates them; brackets and trailing
 * punctuation (,;:!?.) are stripped, except the dot of a partial IP
 * ("10.20.1."); quotes (' " ` and typographic ones) become '. Lowercased
 * bytes go to buf (at most bufmax bytes). Returns the number of tokens
 * written to toks (at most max). Bounded by the input length. */
size_t bt_intents__tokenize(const char *text, size_t len, struct bt_intents__rawtok *toks,
                            size_t max, char *buf, size_t bufmax);

/* Find a word (exact bytes); its id or -1. */
int32_t bt_intents__word_find(const bt_intents *in, const char *s, size_t n);
/* Add a word or merge flags into the existing one: the lower class wins.
 * Returns its id. */
int32_t bt_intents__word_add(bt_intents *in, const char *s, size_t n, unsigned flags, int cls);

/* Tokenize text and add every word; the phrase's ids go to the pool.
 * Returns false (and adds nothing to the pool) when text has no word or more
 * than BT_INTENTS__MAX_PHRASE words. */
bool bt_intents__phrase_add(bt_intents *in, const char *text, unsigned flags, int cls,
                            struct bt_intents__phrase *out);

/* Replace synonym variants by their canonical word (longest variant first).
 * ids[i] < 0 are copied as they are. Returns the number of ids in out (at
 * most n). */
size_t bt_intents__canon(const bt_intents *in, const int32_t *ids, size_t n, int32_t *out);

/* Does phrase p occur in seq[0..n)? Returns its start or -1. */
long bt_intents__phrase_find(const bt_intents *in, struct bt_intents__phrase p, const int32_t *seq,
                             size_t n);

/* Sort the correction targets by length (after the vocabulary is complete). */
void bt_intents__targets_build(bt_intents *in);

/* The nearest correction target to an unknown word, or -1. Rules: words of
 * 4..6 bytes take distance 1, longer ones 2 (Damerau-Levenshtein, adjacent
 * transpositions count 1); the first letter must stay (or be swapped with
 * the second); digits must stay the same digits in the same order; never
 * when one word is the other plus letters at the end (plurals, verb forms);
 * a four-letter word only for two letters swapped or a letter missing inside
 * it. Ties go to the lower class, then the shorter word, then the word added
 * first. */
int32_t bt_intents__correct(const bt_intents *in, const char *s, size_t n);

/* Looks like a host name nobody knows: letters then [-.]groups with a digit
 * somewhere ("web-99", "db-prd-03.example.internal") or a dotted IPv4. */
bool bt_intents__hostlike(const char *s, size_t n);

/* ---- catalog.c -------------------------------------------------------- */

/* Fill in (an empty, calloc'd) in from cfg's intent files and assets;
 * problems go to d. Returns false when there was any. */
bool bt_intents__load(bt_intents *in, const bt_config *cfg, const json_t *assets, bt_diag *d);
/* Free everything in (but not in itself). */
void bt_intents__release(bt_intents *in);
/* Category name ("asset_management", ...). */
const char *bt_intents__category_name(int category);

/* ---- match.c ---------------------------------------------------------- */

json_t *bt_intents__classify(const bt_intents *in, const char *text, char *err, size_t errlen);

#endif
