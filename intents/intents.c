/* intents.c - see intents.h. The work is in catalog.c (loading), vocab.c
 * (words and typos) and match.c (classifying). */
#include <stdlib.h>
#include <string.h>

#include "bot/util.h"
#include "intents/intents_int.h"

bt_intents *bt_intents_new(const bt_config *cfg, const json_t *assets, bt_diag *d)
{
    /* The loader counts problems through d, so it needs one even when the
     * caller does not want the messages. */
    bt_diag *own = d ? NULL : bt_diag_new();
    bt_intents *in = bt_calloc(1, sizeof *in);
    bool ok = bt_intents__load(in, cfg, assets, d ? d : own);
    bt_diag_free(own);
    if (!ok) {
        bt_intents_free(in);
        return NULL;
    }
    return in;
}

void bt_intents_free(bt_intents *in)
{
    if (!in)
        return;
    bt_intents__release(in);
    free(in);
}

size_t bt_intents_count(const bt_intents *in)
{
    return in ? in->nintents : 0;
}

const json_t *bt_intents_at(const bt_intents *in, size_t i)
{
    return in && i < in->nintents ? in->intents[i].def : NULL;
}

const json_t *bt_intents_get(const bt_intents *in, const char *name)
{
    if (!in || !name)
        return NULL;
    for (size_t i = 0; i < in->nintents; i++)
        if (strcmp(in->intents[i].name, name) == 0)
            return in->intents[i].def;
    return NULL;
}

json_t *bt_intents_classify(const bt_intents *in, const char *text, char *err, size_t errlen)
{
    if (!in) {
        bt_fmt(err, errlen, "no intent catalog");
        return NULL;
    }
    return bt_intents__classify(in, text, err, errlen);
}
