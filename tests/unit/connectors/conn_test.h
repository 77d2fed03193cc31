/*
 * conn_test.h - helpers shared by the connectors tests: a throw-away
 * configuration directory written from strings, and a recursive remove.
 */
#ifndef BT_CONN_TEST_H
#define BT_CONN_TEST_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bot/conf.h"
#include "bot/util.h"

static inline void conn_write(const char *dir, const char *name, const char *text)
{
    char *path = bt_asprintf("%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    free(path);
}

/* A new temporary configuration directory (caller frees the name and calls
 * conn_rmtree). NULL texts get a minimal valid file. */
static inline char *conn_config_dir(const char *baton, const char *tools, const char *inventory)
{
    char tmpl[] = "/tmp/bt-conn-XXXXXX";
    char *dir = mkdtemp(tmpl);
    if (!dir)
        return NULL;
    dir = bt_strdup(dir);
    conn_write(dir, "baton.yaml", baton ? baton : "connectors: {}\n");
    conn_write(dir, "tools.yaml", tools ? tools : "tools: []\n");
    conn_write(dir, "inventory.yaml", inventory ? inventory : "assets: []\n");
    char *idir = bt_asprintf("%s/intents", dir);
    mkdir(idir, 0700);
    free(idir);
    conn_write(dir, "intents/test.yaml", "intents: []\n");
    return dir;
}

static inline int conn_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static inline void conn_rmtree(const char *dir)
{
    if (dir)
        nftw(dir, conn_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Print every diagnostic (helps when a check fails). */
static inline void conn_dump_diag(const bt_diag *d)
{
    for (size_t i = 0; i < bt_diag_count(d); i++)
        fprintf(stderr, "  diag: %s\n", bt_diag_get(d, i));
}

/* True when some diagnostic contains every one of the NULL-terminated
 * fragments. */
static inline int conn_diag_has(const bt_diag *d, const char *const *frags)
{
    for (size_t i = 0; i < bt_diag_count(d); i++) {
        const char *s = bt_diag_get(d, i);
        int all = 1;
        for (size_t k = 0; frags[k]; k++)
            if (!strstr(s, frags[k]))
                all = 0;
        if (all)
            return 1;
    }
    return 0;
}
#define DIAG_HAS(d, ...) conn_diag_has((d), (const char *const[]){__VA_ARGS__, NULL})

#endif
