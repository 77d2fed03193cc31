/*
 * pg_fresh.h - fresh PostgreSQL databases for tests that run against either
 * store backend. tests/pg/pg_cluster.sh run sets BATON_TEST_STORE to the URL
 * of a database made for the test (postgres://USER@HOST:PORT/DB); a test
 * that needs several empty stores calls bt_pg_fresh() for each: it makes
 * DB_1, DB_2, ... on the same server and returns their URLs. At the end,
 * bt_pg_fresh_drop_all() drops them. Without BATON_TEST_STORE the test uses
 * SQLite files, as always.
 */
#ifndef BT_PG_FRESH_H
#define BT_PG_FRESH_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "bot/util.h"

static char bt_pg_server[256], bt_pg_db[64];
static int bt_pg_made;

/* True (and the server noted) when BATON_TEST_STORE names a PostgreSQL
 * database; false for SQLite. Exits on a malformed URL. */
static inline bool bt_pg_mode(void)
{
    if (bt_pg_db[0])
        return true;
    const char *url = getenv("BATON_TEST_STORE");
    if (!url || !*url)
        return false;
    const char *slash = strrchr(url, '/');
    if (strncmp(url, "postgres", 8) != 0 || !slash || strchr(slash, '?') ||
        slash - url >= (long)sizeof bt_pg_server ||
        !bt_strlcpy(bt_pg_db, slash + 1, sizeof bt_pg_db)) {
        fprintf(stderr, "BATON_TEST_STORE must be postgres://USER@HOST:PORT/DB\n");
        exit(1);
    }
    memcpy(bt_pg_server, url, (size_t)(slash - url));
    bt_pg_server[slash - url] = '\0';
    return true;
}

/* Run a command on the test's own database; false (with a message) when it
 * fails. */
static inline bool bt_pg_admin(const char *sql)
{
    char *url = bt_asprintf("%s/%s", bt_pg_server, bt_pg_db);
    PGconn *c = PQconnectdb(url);
    PQclear(PQexec(c, "SET client_min_messages TO warning")); /* no "skipping" notices */
    PGresult *r = PQexec(c, sql);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    free(url);
    return ok;
}

/* A new empty database: its URL (caller frees), or NULL on failure. The
 * names are the test's own database's with a number: only [a-z0-9_]
 * (pg_cluster.sh checks), so they need no quoting. */
static inline char *bt_pg_fresh(void)
{
    char sql[256];
    int n = ++bt_pg_made;
    bt_fmt(sql, sizeof sql, "DROP DATABASE IF EXISTS %s_%d WITH (FORCE)", bt_pg_db, n);
    if (!bt_pg_admin(sql))
        return NULL;
    bt_fmt(sql, sizeof sql, "CREATE DATABASE %s_%d", bt_pg_db, n);
    if (!bt_pg_admin(sql))
        return NULL;
    return bt_asprintf("%s/%s_%d", bt_pg_server, bt_pg_db, n);
}

static inline void bt_pg_fresh_drop_all(void)
{
    for (int i = 1; i <= bt_pg_made; i++) {
        char sql[256];
        bt_fmt(sql, sizeof sql, "DROP DATABASE IF EXISTS %s_%d WITH (FORCE)", bt_pg_db, i);
        bt_pg_admin(sql);
    }
}

#endif
