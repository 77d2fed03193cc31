/*
 * conn_helper.c - a child for the local runner tests. argv[1] is the mode:
 *   ignore-term  ignore SIGTERM, print "ready", sleep up to 60 s
 *   fds          print the open file descriptors ("0 1 2")
 *   signals      print the SigBlk and SigIgn lines of /proc/self/status
 *   cwd          print the working directory
 *   stderr       print "boom" on stderr and exit 3
 *   kill-self    die of SIGKILL
 *   grandchild   leave a child holding stdout for 3 s, exit at once
 */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int list_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 1;
    int self = dirfd(d), first = 1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        long fd = strtol(e->d_name, NULL, 10);
        if (fd == self)
            continue;
        printf("%s%ld", first ? "" : " ", fd);
        first = 0;
    }
    closedir(d);
    printf("\n");
    return 0;
}

static int signal_lines(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return 1;
    char line[256];
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "SigBlk:", 7) == 0 || strncmp(line, "SigIgn:", 7) == 0)
            fputs(line, stdout);
    fclose(f);
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "ignore-term") == 0) {
        signal(SIGTERM, SIG_IGN);
        printf("ready\n");
        fflush(stdout);
        for (int i = 0; i < 60; i++)
            sleep(1);
        return 0;
    }
    if (strcmp(mode, "fds") == 0)
        return list_fds();
    if (strcmp(mode, "signals") == 0)
        return signal_lines();
    if (strcmp(mode, "cwd") == 0) {
        char buf[4096];
        printf("%s\n", getcwd(buf, sizeof buf) ? buf : "?");
        return 0;
    }
    if (strcmp(mode, "stderr") == 0) {
        fprintf(stderr, "boom\nsecond line\n");
        return 3;
    }
    if (strcmp(mode, "kill-self") == 0) {
        fflush(stdout);
        kill(getpid(), SIGKILL);
        return 0;
    }
    if (strcmp(mode, "grandchild") == 0) {
        printf("parent done\n");
        fflush(stdout);
        if (fork() == 0) {
            sleep(3);
            _exit(0);
        }
        return 0;
    }
    fprintf(stderr, "conn_helper: unknown mode '%s'\n", mode);
    return 2;
}
