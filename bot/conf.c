/* conf.c - see conf.h. */
#include "bot/conf.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <yaml.h>

#include "bot/util.h"

#define CONF_MAX_FILE (4u * 1024u * 1024u)
#define CONF_MAX_DEPTH 64
#define CONF_MAX_INTENT_FILES 256
#define CONF_MAX_DIAG 1000

/* ---- diagnostics ---------------------------------------------------- */

struct bt_diag {
    char **items;
    size_t count, cap;
    size_t dropped;
};

bt_diag *bt_diag_new(void)
{
    return bt_calloc(1, sizeof(bt_diag));
}

void bt_diag_free(bt_diag *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->count; i++)
        free(d->items[i]);
    free(d->items);
    free(d);
}

static void diag_push(bt_diag *d, char *s)
{
    if (d->count >= CONF_MAX_DIAG) {
        d->dropped++;
        free(s);
        return;
    }
    if (d->count == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 16;
        d->items = bt_realloc(d->items, d->cap * sizeof(char *));
    }
    d->items[d->count++] = s;
}

static void diag_vadd(bt_diag *d, const char *file, int line, const char *key, const char *fmt,
                      va_list ap)
{
    if (!d)
        return;
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    bt_buf b = BT_BUF_INIT(4096);
    if (file && *file)
        bt_buf_printf(&b, "%s:", file);
    if (line > 0)
        bt_buf_printf(&b, "%d:", line);
    if (b.len)
        bt_buf_puts(&b, " ");
    if (key && *key)
        bt_buf_printf(&b, "%s: ", key);
    bt_buf_puts(&b, msg);
    diag_push(d, bt_buf_steal(&b));
}

void bt_diag_add(bt_diag *d, const char *file, int line, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(d, file, line, key, fmt, ap);
    va_end(ap);
}

size_t bt_diag_count(const bt_diag *d)
{
    return d ? d->count + d->dropped : 0;
}

const char *bt_diag_get(const bt_diag *d, size_t i)
{
    if (!d || i >= d->count)
        return "(further problems not listed)";
    return d->items[i];
}

/* ---- line map: (node, key) -> line ------------------------------------ */

struct line_slot {
    const void *node;
    uint64_t keyhash; /* 0: the node itself */
    int line;
};

struct bt_yaml_doc {
    char *name;
    json_t *root;
    struct line_slot *slots;
    size_t nslots, used;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h | 1; /* never 0: 0 marks the node itself */
}

static size_t slot_index(const void *node, uint64_t kh, size_t n)
{
    uint64_t h = (uint64_t)(uintptr_t)node * 11400714819323198485ull ^ kh;
    return (size_t)(h ^ (h >> 29)) & (n - 1);
}

static void lines_put(bt_yaml_doc *doc, const void *node, uint64_t kh, int line);

static void lines_grow(bt_yaml_doc *doc)
{
    struct line_slot *old = doc->slots;
    size_t oldn = doc->nslots;
    doc->nslots = oldn ? oldn * 2 : 256;
    doc->slots = bt_calloc(doc->nslots, sizeof(struct line_slot));
    doc->used = 0;
    for (size_t i = 0; i < oldn; i++)
        if (old[i].node)
            lines_put(doc, old[i].node, old[i].keyhash, old[i].line);
    free(old);
}

static void lines_put(bt_yaml_doc *doc, const void *node, uint64_t kh, int line)
{
    if ((doc->used + 1) * 2 > doc->nslots)
        lines_grow(doc);
    size_t i = slot_index(node, kh, doc->nslots);
    while (doc->slots[i].node && !(doc->slots[i].node == node && doc->slots[i].keyhash == kh))
        i = (i + 1) & (doc->nslots - 1);
    if (!doc->slots[i].node)
        doc->used++;
    doc->slots[i].node = node;
    doc->slots[i].keyhash = kh;
    doc->slots[i].line = line;
}

static int lines_get(const bt_yaml_doc *doc, const void *node, uint64_t kh)
{
    if (!doc || !node || !doc->nslots)
        return 0;
    size_t i = slot_index(node, kh, doc->nslots);
    for (size_t probes = 0; probes < doc->nslots && doc->slots[i].node; probes++) {
        if (doc->slots[i].node == node && doc->slots[i].keyhash == kh)
            return doc->slots[i].line;
        i = (i + 1) & (doc->nslots - 1);
    }
    return 0;
}

static bool is_singleton(const json_t *v)
{
    return json_is_true(v) || json_is_false(v) || json_is_null(v);
}

/* ---- YAML parsing ----------------------------------------------------- */

struct frame {
    json_t *node;
    bool is_map;
    char *key; /* mapping: key waiting for its value */
    int key_line;
};

static bool match_int(const char *s)
{
    if (*s == '-' || *s == '+')
        s++;
    if (!*s)
        return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

static bool match_real(const char *s)
{
    if (*s == '-' || *s == '+')
        s++;
    bool digits = false, dot = false;
    for (; *s && *s != 'e' && *s != 'E'; s++) {
        if (*s >= '0' && *s <= '9')
            digits = true;
        else if (*s == '.' && !dot)
            dot = true;
        else
            return false;
    }
    if (!digits || !dot)
        return false;
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '-' || *s == '+')
            s++;
        if (!*s)
            return false;
        for (; *s; s++)
            if (*s < '0' || *s > '9')
                return false;
    }
    return true;
}

static json_t *plain_scalar(const char *v, size_t len)
{
    if (len == 0 || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 ||
        strcmp(v, "NULL") == 0)
        return json_null();
    if (strcmp(v, "true") == 0 || strcmp(v, "True") == 0 || strcmp(v, "TRUE") == 0)
        return json_true();
    if (strcmp(v, "false") == 0 || strcmp(v, "False") == 0 || strcmp(v, "FALSE") == 0)
        return json_false();
    if (len < 19 && match_int(v)) {
        errno = 0;
        long long n = strtoll(v, NULL, 10);
        if (!errno)
            return json_integer(n);
    }
    if (len < 64 && match_real(v))
        return json_real(strtod(v, NULL));
    return json_stringn(v, len);
}

static void doc_error(bt_diag *d, const char *name, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void doc_error(bt_diag *d, const char *name, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(d, name, line, NULL, fmt, ap);
    va_end(ap);
}

/* Attach value to the frame on top (or make it the root). Steals value. */
static bool attach(bt_yaml_doc *doc, struct frame *top, json_t *value, int line, bt_diag *d)
{
    if (!is_singleton(value))
        lines_put(doc, value, 0, line);
    if (!top) {
        doc->root = value;
        return true;
    }
    if (top->is_map) {
        if (!top->key) {
            /* value in key position */
            if (!json_is_string(value)) {
                doc_error(d, doc->name, line, "mapping keys must be plain strings");
                json_decref(value);
                return false;
            }
            const char *k = json_string_value(value);
            if (json_object_get(top->node, k)) {
                doc_error(d, doc->name, line, "%s: duplicate key", k);
                json_decref(value);
                return false;
            }
            top->key = bt_strdup(k);
            top->key_line = line;
            json_decref(value);
            return true;
        }
        lines_put(doc, top->node, hash_str(top->key), top->key_line);
        json_object_set_new(top->node, top->key, value);
        free(top->key);
        top->key = NULL;
        return true;
    }
    json_array_append_new(top->node, value);
    return true;
}

bt_yaml_doc *bt_yaml_parse(const char *name, const char *text, size_t len, bt_diag *d)
{
    bt_yaml_doc *doc = bt_calloc(1, sizeof *doc);
    doc->name = bt_strdup(name);
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        doc_error(d, name, 0, "cannot initialise the YAML parser");
        bt_yaml_free(doc);
        return NULL;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);

    struct frame stack[CONF_MAX_DEPTH];
    int depth = 0;
    bool ok = true, done = false;
    int documents = 0;
    /* Each event consumes input, so the loop is bounded by the input size;
     * the explicit cap is a second guard. */
    for (size_t events = 0; ok && !done && events < 4 * (size_t)len + 64; events++) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            doc_error(d, name, (int)parser.problem_mark.line + 1, "YAML syntax error: %s%s%s",
                      parser.problem ? parser.problem : "unknown problem",
                      parser.context ? " " : "", parser.context ? parser.context : "");
            ok = false;
            break;
        }
        int line = (int)ev.start_mark.line + 1;
        struct frame *top = depth ? &stack[depth - 1] : NULL;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++documents > 1) {
                doc_error(d, name, line, "only one YAML document per file");
                ok = false;
            }
            break;
        case YAML_ALIAS_EVENT:
            doc_error(d, name, line, "anchors and aliases are not supported");
            ok = false;
            break;
        case YAML_SCALAR_EVENT: {
            if (ev.data.scalar.anchor) {
                doc_error(d, name, line, "anchors and aliases are not supported");
                ok = false;
                break;
            }
            const char *v = (const char *)ev.data.scalar.value;
            size_t vlen = ev.data.scalar.length;
            if (strlen(v) != vlen) {
                doc_error(d, name, line, "NUL byte in a scalar");
                ok = false;
                break;
            }
            /* Keys are always strings, so `1: x` has the key "1". */
            bool key_position = top && top->is_map && !top->key;
            json_t *value = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE && !key_position
                                ? plain_scalar(v, vlen)
                                : json_stringn(v, vlen);
            if (!value) {
                doc_error(d, name, line, "scalar is not valid UTF-8");
                ok = false;
                break;
            }
            ok = attach(doc, top, value, line, d);
            break;
        }
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT: {
            bool is_map = ev.type == YAML_MAPPING_START_EVENT;
            const yaml_char_t *anchor =
                is_map ? ev.data.mapping_start.anchor : ev.data.sequence_start.anchor;
            if (anchor) {
                doc_error(d, name, line, "anchors and aliases are not supported");
                ok = false;
                break;
            }
            if (top && top->is_map && !top->key) {
                doc_error(d, name, line, "mapping keys must be plain strings");
                ok = false;
                break;
            }
            if (depth >= CONF_MAX_DEPTH) {
                doc_error(d, name, line, "nesting deeper than %d levels", CONF_MAX_DEPTH);
                ok = false;
                break;
            }
            json_t *node = is_map ? json_object() : json_array();
            lines_put(doc, node, 0, line);
            stack[depth].node = node;
            stack[depth].is_map = is_map;
            stack[depth].key = NULL;
            stack[depth].key_line = line;
            depth++;
            break;
        }
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT: {
            depth--;
            json_t *node = stack[depth].node;
            int node_line = lines_get(doc, node, 0);
            ok = attach(doc, depth ? &stack[depth - 1] : NULL, node, node_line, d);
            break;
        }
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    if (ok && !done) {
        doc_error(d, name, 0, "YAML input did not end properly");
        ok = false;
    }
    for (int i = 0; i < depth; i++) {
        free(stack[i].key);
        json_decref(stack[i].node);
    }
    if (!ok) {
        bt_yaml_free(doc);
        return NULL;
    }
    return doc;
}

bt_yaml_doc *bt_yaml_load(const char *path, bt_diag *d)
{
    char err[BT_ERRLEN];
    char *text = NULL;
    size_t len = 0;
    enum bt_err e = bt_read_file(path, CONF_MAX_FILE, &text, &len, err, sizeof err);
    if (e != BT_OK) {
        bt_diag_add(d, NULL, 0, NULL, "%s", err);
        return NULL;
    }
    bt_yaml_doc *doc = bt_yaml_parse(path, text, len, d);
    free(text);
    return doc;
}

void bt_yaml_free(bt_yaml_doc *doc)
{
    if (!doc)
        return;
    json_decref(doc->root);
    free(doc->slots);
    free(doc->name);
    free(doc);
}

json_t *bt_yaml_root(const bt_yaml_doc *doc)
{
    return doc ? doc->root : NULL;
}

const char *bt_yaml_name(const bt_yaml_doc *doc)
{
    return doc ? doc->name : NULL;
}

int bt_yaml_line(const bt_yaml_doc *doc, const json_t *node)
{
    return lines_get(doc, node, 0);
}

int bt_yaml_key_line(const bt_yaml_doc *doc, const json_t *obj, const char *key)
{
    if (!obj)
        return 0;
    if (key && json_is_object(obj)) {
        json_t *v = json_object_get(obj, key);
        int line = v && !is_singleton(v) ? lines_get(doc, v, 0) : 0;
        if (!line)
            line = lines_get(doc, obj, hash_str(key));
        if (line)
            return line;
    }
    return lines_get(doc, obj, 0);
}

void bt_diag_at(bt_diag *d, const bt_yaml_doc *doc, const json_t *node, const char *key,
                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(d, bt_yaml_name(doc), bt_yaml_key_line(doc, node, key), key, fmt, ap);
    va_end(ap);
}

/* ---- configuration directory ----------------------------------------- */

struct bt_config {
    char *dir;
    bt_yaml_doc *main, *tools, *inventory;
    bt_yaml_doc **intents;
    size_t nintents;
};

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

char *bt_config_find_dir(const char *explicit_dir)
{
    if (explicit_dir && *explicit_dir)
        return bt_strdup(explicit_dir);
    const char *env = getenv("BATON_CONFIG");
    if (env && *env)
        return bt_strdup(env);
    if (is_dir("config"))
        return bt_strdup("config");
    return bt_strdup("/etc/baton");
}

static bt_yaml_doc *load_required(const char *dir, const char *file, bt_diag *d)
{
    char *path = bt_asprintf("%s/%s", dir, file);
    bt_yaml_doc *doc = bt_yaml_load(path, d);
    if (doc && !json_is_object(bt_yaml_root(doc))) {
        bt_diag_add(d, path, 1, NULL, "the file must hold a mapping at the top level");
        bt_yaml_free(doc);
        doc = NULL;
    }
    free(path);
    return doc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool has_yaml_suffix(const char *n)
{
    size_t len = strlen(n);
    return (len > 5 && strcmp(n + len - 5, ".yaml") == 0) ||
           (len > 4 && strcmp(n + len - 4, ".yml") == 0);
}

bt_config *bt_config_load(const char *dir, bt_diag *d)
{
    if (!is_dir(dir)) {
        bt_diag_add(d, dir, 0, NULL, "configuration directory not found");
        return NULL;
    }
    bt_config *cfg = bt_calloc(1, sizeof *cfg);
    cfg->dir = bt_strdup(dir);
    cfg->main = load_required(dir, "baton.yaml", d);
    cfg->tools = load_required(dir, "tools.yaml", d);
    cfg->inventory = load_required(dir, "inventory.yaml", d);

    char *idir = bt_asprintf("%s/intents", dir);
    DIR *dh = opendir(idir);
    if (!dh) {
        bt_diag_add(d, idir, 0, NULL, "intent directory not found: %s", strerror(errno));
    } else {
        char *names[CONF_MAX_INTENT_FILES];
        size_t n = 0;
        struct dirent *de;
        while ((de = readdir(dh)) != NULL) {
            if (de->d_name[0] == '.' || !has_yaml_suffix(de->d_name))
                continue;
            if (n == CONF_MAX_INTENT_FILES) {
                bt_diag_add(d, idir, 0, NULL, "more than %d intent files", CONF_MAX_INTENT_FILES);
                break;
            }
            names[n++] = bt_strdup(de->d_name);
        }
        closedir(dh);
        qsort(names, n, sizeof names[0], cmp_str);
        cfg->intents = bt_calloc(n ? n : 1, sizeof(bt_yaml_doc *));
        for (size_t i = 0; i < n; i++) {
            char *rel = bt_asprintf("intents/%s", names[i]);
            bt_yaml_doc *doc = load_required(dir, rel, d);
            if (doc)
                cfg->intents[cfg->nintents++] = doc;
            free(rel);
            free(names[i]);
        }
        if (n == 0)
            bt_diag_add(d, idir, 0, NULL, "no intent files (*.yaml)");
    }
    free(idir);
    return cfg;
}

void bt_config_free(bt_config *cfg)
{
    if (!cfg)
        return;
    bt_yaml_free(cfg->main);
    bt_yaml_free(cfg->tools);
    bt_yaml_free(cfg->inventory);
    for (size_t i = 0; i < cfg->nintents; i++)
        bt_yaml_free(cfg->intents[i]);
    free(cfg->intents);
    free(cfg->dir);
    free(cfg);
}

const char *bt_config_dir(const bt_config *cfg)
{
    return cfg->dir;
}

const bt_yaml_doc *bt_config_main(const bt_config *cfg)
{
    return cfg->main;
}

const bt_yaml_doc *bt_config_tools(const bt_config *cfg)
{
    return cfg->tools;
}

const bt_yaml_doc *bt_config_inventory(const bt_config *cfg)
{
    return cfg->inventory;
}

size_t bt_config_intent_count(const bt_config *cfg)
{
    return cfg->nintents;
}

const bt_yaml_doc *bt_config_intent_doc(const bt_config *cfg, size_t i)
{
    return i < cfg->nintents ? cfg->intents[i] : NULL;
}

json_t *bt_config_get(const bt_config *cfg, const char *dotted)
{
    json_t *node = cfg ? bt_yaml_root(cfg->main) : NULL;
    const char *p = dotted;
    while (node && *p) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        char key[128];
        if (len >= sizeof key)
            return NULL;
        memcpy(key, p, len);
        key[len] = '\0';
        node = json_is_object(node) ? json_object_get(node, key) : NULL;
        p += len + (dot ? 1 : 0);
    }
    return node;
}

/* ---- checking helpers --------------------------------------------------- */

const char *bt_conf_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "a mapping";
    case JSON_ARRAY:
        return "a list";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "empty";
    }
    return "unknown";
}

static json_t *check_typed(bt_diag *d, const bt_yaml_doc *doc, const json_t *obj, const char *key,
                           bool required, json_type want, const char *want_name)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (!v || json_is_null(v)) {
        if (required)
            bt_diag_at(d, doc, obj, key, "required, missing");
        return NULL;
    }
    if (json_typeof(v) != want) {
        bt_diag_at(d, doc, obj, key, "must be %s, found %s", want_name, bt_conf_type_name(v));
        return NULL;
    }
    return v;
}

const char *bt_check_string(bt_diag *d, const bt_yaml_doc *doc, const json_t *obj, const char *key,
                            bool required)
{
    /* A plain 1.2 is a number to YAML: the message tells the user to quote it. */
    json_t *v = check_typed(d, doc, obj, key, required, JSON_STRING, "a string (quote it)");
    if (v && json_string_length(v) == 0) {
        if (required)
            bt_diag_at(d, doc, obj, key, "must not be empty");
        return NULL;
    }
    return v ? json_string_value(v) : NULL;
}

json_t *bt_check_array(bt_diag *d, const bt_yaml_doc *doc, const json_t *obj, const char *key,
                       bool required)
{
    return check_typed(d, doc, obj, key, required, JSON_ARRAY, "a list");
}

json_t *bt_check_object(bt_diag *d, const bt_yaml_doc *doc, const json_t *obj, const char *key,
                        bool required)
{
    return check_typed(d, doc, obj, key, required, JSON_OBJECT, "a mapping");
}

bool bt_check_int(bt_diag *d, const bt_yaml_doc *doc, const json_t *obj, const char *key,
                  bool required, long long min, long long max, long long *out)
{
    json_t *v = check_typed(d, doc, obj, key, required, JSON_INTEGER, "an integer");
    if (!v)
        return false;
    long long n = json_integer_value(v);
    if (n < min || n > max) {
        bt_diag_at(d, doc, obj, key, "must be between %lld and %lld, found %lld", min, max, n);
        return false;
    }
    *out = n;
    return true;
}

void bt_check_keys(bt_diag *d, const bt_yaml_doc *doc, const json_t *obj,
                   const char *const *allowed)
{
    if (!json_is_object(obj))
        return;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        bool known = false;
        for (size_t i = 0; allowed[i]; i++)
            if (strcmp(allowed[i], key) == 0)
                known = true;
        if (!known)
            bt_diag_at(d, doc, obj, key, "unknown key");
    }
}
