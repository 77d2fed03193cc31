/*
 * bench_pipeline - how long stages A-E take in process, on the shipped
 * configuration:
 *   classify   stage A alone, over every utterance of a fixed mix
 *   explain    stages A-D for "how many assets do we have?" (nothing stored)
 *   handle     A-E for the same request: store the request, decision, plan,
 *              execution and audit entries (SQLite, WAL) and run the count
 * Prints per-operation mean, p50 and p99 in microseconds and ops/s.
 *
 * usage: bench_pipeline [ITERATIONS]   (default 2000)
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bot/conf.h"
#include "bot/util.h"
#include "connectors/connectors.h"
#include "intents/intents.h"
#include "pipeline/pipeline.h"

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void report(const char *name, int64_t *ns, long n)
{
    qsort(ns, (size_t)n, sizeof *ns, cmp_i64);
    double total = 0;
    for (long i = 0; i < n; i++)
        total += (double)ns[i];
    double mean_us = total / (double)n / 1000.0;
    printf("%-10s n=%-6ld mean %8.1f us   p50 %8.1f us   p99 %8.1f us   %9.0f ops/s\n", name, n,
           mean_us, (double)ns[n / 2] / 1000.0, (double)ns[(n * 99) / 100] / 1000.0, 1e6 / mean_us);
}

int main(int argc, char **argv)
{
    long iters = 2000;
    if (argc > 1 && !bt_parse_long(argv[1], 1, 10000000, &iters)) {
        fprintf(stderr, "usage: %s [ITERATIONS]\n", argv[0]);
        return 2;
    }
    static const char *const mix[] = {"how many assets do we have?",
                                      "list all production web servers",
                                      "restart nginx on web-01",
                                      "chekc the staus of ngnix on web-01",
                                      "deploy billing-api 1.2.3 to production",
                                      "how do I restart a service?",
                                      "what's the weather in Paris",
                                      "show me server details for db-prd-01",
                                      "tail /var/log/syslog on localhost",
                                      "open port 8443 on web-01"};
    size_t nmix = sizeof mix / sizeof mix[0];

    bt_diag *d = bt_diag_new();
    bt_config *cfg = bt_config_load(BT_SOURCE_DIR "/config", d);
    char dir[] = "/tmp/bt-bench-XXXXXX";
    if (!cfg || !mkdtemp(dir)) {
        fprintf(stderr, "cannot load configuration\n");
        return 1;
    }
    char store[600];
    bt_fmt(store, sizeof store, "%s/bench.db", dir);
    json_t *assets = bt_connectors_inventory(cfg, d);
    bt_intents *in = bt_intents_new(cfg, assets, d);
    bt_pipeline *p = bt_pipeline_new(cfg, store, d);
    if (!in || !p) {
        for (size_t i = 0; i < bt_diag_count(d); i++)
            fprintf(stderr, "  %s\n", bt_diag_get(d, i));
        return 1;
    }
    int64_t *ns = bt_calloc((size_t)iters, sizeof *ns);
    char err[BT_ERRLEN];

    for (long i = 0; i < iters; i++) {
        int64_t t0 = now_ns();
        json_t *dec = bt_intents_classify(in, mix[(size_t)i % nmix], err, sizeof err);
        ns[i] = now_ns() - t0;
        json_decref(dec);
    }
    report("classify", ns, iters);

    for (long i = 0; i < iters; i++) {
        int64_t t0 = now_ns();
        json_t *r = bt_pipeline_explain(p, "how many assets do we have?", "alice");
        ns[i] = now_ns() - t0;
        json_decref(r);
    }
    report("explain", ns, iters);

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    for (long i = 0; i < iters; i++) {
        int64_t t0 = now_ns();
        json_t *r = bt_pipeline_handle(p, "how many assets do we have?", "alice", "bench");
        ns[i] = now_ns() - t0;
        json_decref(r);
    }
    getrusage(RUSAGE_SELF, &ru1);
    report("handle", ns, iters);
    double cpu_us = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) * 1e6 +
                    (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) +
                    (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) * 1e6 +
                    (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec);
    printf("handle     CPU %.1f us per request (user+system), max RSS %ld KiB\n",
           cpu_us / (double)iters, ru1.ru_maxrss);

    free(ns);
    bt_pipeline_free(p);
    bt_intents_free(in);
    json_decref(assets);
    bt_config_free(cfg);
    bt_diag_free(d);
    static const char *const suffixes[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        char path[700];
        bt_fmt(path, sizeof path, "%s%s", store, suffixes[i]);
        unlink(path);
    }
    rmdir(dir);
    return 0;
}
