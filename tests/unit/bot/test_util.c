/* Unit tests for bot/util.c and bot/log.c. */
#include <stdlib.h>

#include "bot/log.h"
#include "bot/util.h"
#include "test.h"

static void test_buf_cap(void)
{
    bt_buf b = BT_BUF_INIT(10);
    CHECK_INT(bt_buf_puts(&b, "12345"), BT_OK);
    CHECK_INT(bt_buf_puts(&b, "67890"), BT_OK);
    CHECK_INT(bt_buf_puts(&b, "x"), BT_ETOOBIG);
    CHECK_INT(b.len, 10);
    CHECK_STR(b.data, "1234567890");
    char *s = bt_buf_steal(&b);
    CHECK_STR(s, "1234567890");
    free(s);
    CHECK_INT(b.len, 0);
}

static void test_sha256(void)
{
    char hex[65];
    bt_sha256_hex("abc", 3, hex);
    CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void test_canonical(void)
{
    json_t *a = json_pack("{s:i, s:[s, {s:s, s:b}]}", "z", 1, "a", "x", "k", "v", "b", 1);
    char *s = bt_json_canonical(a);
    CHECK_STR(s, "{\"a\":[\"x\",{\"b\":true,\"k\":\"v\"}],\"z\":1}");
    free(s);
    json_decref(a);
}

static void test_utf8(void)
{
    CHECK(bt_utf8_valid("plain", 5));
    CHECK(bt_utf8_valid("caf\xc3\xa9", 5));
    CHECK(!bt_utf8_valid("\xc0\xaf", 2));         /* overlong */
    CHECK(!bt_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    CHECK(!bt_utf8_valid("\xe2\x82", 2));         /* truncated */
    CHECK(!bt_utf8_valid("\xf5\x80\x80\x80", 4)); /* beyond U+10FFFF */
}

static void test_parse_long(void)
{
    long v = 0;
    CHECK(bt_parse_long("42", 0, 100, &v) && v == 42);
    CHECK(!bt_parse_long("42x", 0, 100, &v));
    CHECK(!bt_parse_long("", 0, 100, &v));
    CHECK(!bt_parse_long("101", 0, 100, &v));
    CHECK(!bt_parse_long("99999999999999999999999", 0, 100, &v));
}

static void test_strlcpy_fmt(void)
{
    char small[4];
    CHECK(!bt_strlcpy(small, "hello", sizeof small));
    CHECK_STR(small, "hel");
    CHECK(bt_strlcpy(small, "hi", sizeof small));
    CHECK(!bt_fmt(small, sizeof small, "%d", 12345));
    CHECK_STR(small, "123");
}

static void test_random_id(void)
{
    char a[33], b[33];
    bt_random_id(a);
    bt_random_id(b);
    CHECK_INT(strlen(a), 32);
    CHECK(strcmp(a, b) != 0);
}

static void test_log_line(void)
{
    char *mem = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&mem, &len);
    bt_log_set_stream(f);
    bt_log_set_level(BT_LOG_INFO);
    bt_log(BT_LOG_DEBUG, "test", NULL, "hidden %d", 1);
    bt_log(BT_LOG_INFO, "test", "req1", "shown \"%s\"", "quoted");
    fflush(f);
    json_error_t jerr;
    json_t *o = json_loads(mem, 0, &jerr);
    CHECK(o != NULL);
    CHECK_STR(json_string_value(json_object_get(o, "msg")), "shown \"quoted\"");
    CHECK_STR(json_string_value(json_object_get(o, "req")), "req1");
    CHECK_STR(json_string_value(json_object_get(o, "level")), "info");
    json_decref(o);
    bt_log_set_stream(NULL);
    fclose(f);
    free(mem);
}

int main(void)
{
    RUN(test_buf_cap);
    RUN(test_sha256);
    RUN(test_canonical);
    RUN(test_utf8);
    RUN(test_parse_long);
    RUN(test_strlcpy_fmt);
    RUN(test_random_id);
    RUN(test_log_line);
    return bt_test_finish();
}
