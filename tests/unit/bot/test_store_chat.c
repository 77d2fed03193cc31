/* Unit tests for the team-chat part of bot/store: event claims (exactly one
 * winner across handles) and where approval cards are posted. The store
 * location comes from BATON_TEST_STORE when set (a PostgreSQL URL), else a
 * SQLite file under a mkdtemp() directory. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bot/store/store.h"
#include "bot/util.h"
#include "test.h"

static char location[512];

static bt_store *open_ok(void)
{
    bt_store *st = NULL;
    char err[BT_ERRLEN];
    enum bt_err e = bt_store_open(location, &st, err, sizeof err);
    CHECK_MSG(e == BT_OK && st, "open %s: %s", location, err);
    return st;
}

static void test_claim_once(void)
{
    bt_store *a = open_ok(), *b = open_ok();
    char err[BT_ERRLEN];
    bool claimed = false;
    CHECK_INT(bt_store_chat_claim(a, "slack:Ev001", &claimed, err, sizeof err), BT_OK);
    CHECK(claimed);
    CHECK_INT(bt_store_chat_claim(a, "slack:Ev001", &claimed, err, sizeof err), BT_OK);
    CHECK(!claimed);
    /* another handle (another instance) sees the claim */
    CHECK_INT(bt_store_chat_claim(b, "slack:Ev001", &claimed, err, sizeof err), BT_OK);
    CHECK(!claimed);
    CHECK_INT(bt_store_chat_claim(b, "mattermost:Ev001", &claimed, err, sizeof err), BT_OK);
    CHECK(claimed);
    /* bad keys are refused before the backend */
    CHECK_INT(bt_store_chat_claim(a, "", &claimed, err, sizeof err), BT_EINVAL);
    CHECK(!claimed);
    CHECK_INT(bt_store_chat_claim(a, "bad\xff", &claimed, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_chat_claim(a, NULL, &claimed, err, sizeof err), BT_EINVAL);
    bt_store_close(a);
    bt_store_close(b);
}

struct racer {
    int wins;
    int errors;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    bt_store *st = open_ok();
    char err[BT_ERRLEN], key[32];
    for (int i = 0; i < 200; i++) {
        bool claimed = false;
        bt_fmt(key, sizeof key, "race:%d", i);
        if (bt_store_chat_claim(st, key, &claimed, err, sizeof err) != BT_OK)
            r->errors++;
        else if (claimed)
            r->wins++;
    }
    bt_store_close(st);
    return NULL;
}

/* Four handles on four threads claim the same 200 keys: every key has
 * exactly one winner. */
static void test_claim_race(void)
{
    struct racer r[4];
    pthread_t t[4];
    memset(r, 0, sizeof r);
    for (int i = 0; i < 4; i++)
        CHECK(pthread_create(&t[i], NULL, race, &r[i]) == 0);
    int wins = 0, errors = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        wins += r[i].wins;
        errors += r[i].errors;
    }
    CHECK_INT(errors, 0);
    CHECK_INT(wins, 200);
}

static void test_posts(void)
{
    bt_store *st = open_ok();
    char err[BT_ERRLEN];
    json_t *list = NULL;
    CHECK_INT(bt_store_chat_posts_of(st, "ap-1", &list, err, sizeof err), BT_OK);
    CHECK_INT(json_array_size(list), 0);
    json_decref(list);
    CHECK_INT(bt_store_chat_post_add(st, "ap-1", "slack", "C01", "1700000000.000100",
                                     "1700000000.000001", err, sizeof err),
              BT_OK);
    /* the same post again changes nothing */
    CHECK_INT(bt_store_chat_post_add(st, "ap-1", "slack", "C01", "1700000000.000100",
                                     "1700000000.000001", err, sizeof err),
              BT_OK);
    CHECK_INT(bt_store_chat_post_add(st, "ap-1", "mattermost", "ch1", "p1", NULL, err, sizeof err),
              BT_OK);
    CHECK_INT(bt_store_chat_post_add(st, "ap-2", "slack", "C01", "1700000000.000200", NULL, err,
                                     sizeof err),
              BT_OK);
    CHECK_INT(bt_store_chat_posts_of(st, "ap-1", &list, err, sizeof err), BT_OK);
    CHECK_INT(json_array_size(list), 2);
    json_t *p0 = json_array_get(list, 0), *p1 = json_array_get(list, 1);
    CHECK_STR(json_string_value(json_object_get(p0, "surface")), "slack");
    CHECK_STR(json_string_value(json_object_get(p0, "channel")), "C01");
    CHECK_STR(json_string_value(json_object_get(p0, "post")), "1700000000.000100");
    CHECK_STR(json_string_value(json_object_get(p0, "thread")), "1700000000.000001");
    CHECK_STR(json_string_value(json_object_get(p1, "surface")), "mattermost");
    CHECK(json_object_get(p1, "thread") == NULL);
    CHECK(json_integer_value(json_object_get(p1, "created_ms")) > 0);
    json_decref(list);
    CHECK_INT(bt_store_chat_post_add(st, "", "slack", "C", "p", NULL, err, sizeof err), BT_EINVAL);
    CHECK_INT(bt_store_chat_post_add(st, "ap-3", "slack", "C", NULL, NULL, err, sizeof err),
              BT_EINVAL);
    CHECK_INT(bt_store_chat_posts_of(st, "", &list, err, sizeof err), BT_EINVAL);
    CHECK(list == NULL);
    bt_store_close(st);
}

int main(void)
{
    char tmpdir[64] = "";
    const char *url = getenv("BATON_TEST_STORE");
    if (url && *url) {
        bt_strlcpy(location, url, sizeof location);
    } else {
        bt_strlcpy(tmpdir, "/tmp/baton-store-chat-XXXXXX", sizeof tmpdir);
        if (!mkdtemp(tmpdir)) {
            perror("mkdtemp");
            return 1;
        }
        bt_fmt(location, sizeof location, "%s/chat.db", tmpdir);
    }
    RUN(test_claim_once);
    RUN(test_claim_race);
    RUN(test_posts);
    if (*tmpdir) {
        char *wal = bt_asprintf("%s-wal", location), *shm = bt_asprintf("%s-shm", location);
        unlink(location);
        unlink(wal);
        unlink(shm);
        free(wal);
        free(shm);
        rmdir(tmpdir);
    }
    return bt_test_finish();
}
