/*
 * test.h - the smallest test harness that does the job: CHECK macros that
 * count and report failures with file:line, and a closing line CTest-style
 * tools read ("N passed, N failed"). Each test program exits non-zero when any
 * check failed.
 */
#ifndef BT_TEST_H
#define BT_TEST_H

#include <stdio.h>
#include <string.h>

static int bt_test_passed __attribute__((unused)), bt_test_failed __attribute__((unused));
static const char *bt_test_current __attribute__((unused)) = "";

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            bt_test_passed++;                                                                      \
        } else {                                                                                   \
            bt_test_failed++;                                                                      \
            fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__, bt_test_current,  \
                    #cond);                                                                        \
        }                                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        if (cond) {                                                                                \
            bt_test_passed++;                                                                      \
        } else {                                                                                   \
            bt_test_failed++;                                                                      \
            fprintf(stderr, "%s:%d: %s: check failed: %s: ", __FILE__, __LINE__, bt_test_current,  \
                    #cond);                                                                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *bt_a_ = (a), *bt_b_ = (b);                                                     \
        CHECK_MSG(bt_a_ &&bt_b_ &&strcmp(bt_a_, bt_b_) == 0, "got \"%s\", want \"%s\"",            \
                  bt_a_ ? bt_a_ : "(null)", bt_b_ ? bt_b_ : "(null)");                             \
    } while (0)

#define CHECK_INT(a, b)                                                                            \
    do {                                                                                           \
        long long bt_a_ = (long long)(a), bt_b_ = (long long)(b);                                  \
        CHECK_MSG(bt_a_ == bt_b_, "got %lld, want %lld", bt_a_, bt_b_);                            \
    } while (0)

#define RUN(fn)                                                                                    \
    do {                                                                                           \
        bt_test_current = #fn;                                                                     \
        fn();                                                                                      \
    } while (0)

static inline int bt_test_finish(void)
{
    printf("%d passed, %d failed\n", bt_test_passed, bt_test_failed);
    return bt_test_failed ? 1 : 0;
}

#endif
