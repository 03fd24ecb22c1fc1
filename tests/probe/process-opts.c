/* What the payload process sees of nixspawn's (and systemd-nspawn's)
 * process options that a shell cannot show: socket(2) per address family
 * (--restrict-address-families) and the sync calls (--suppress-sync).
 * Each call is made so that, unfiltered, the kernel answers with an error
 * of its own (a bad fd, bad flags), and a filter's no-op shows as "ok".
 * Built static:  cc -static -O2 -o process-opts process-opts.c */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *name, long ret) {
    if (ret >= 0)
        printf("%s: ok\n", name);
    else
        printf("%s: %s\n", name, strerrorname_np(errno));
}

int main(void) {
    static const struct { const char *name; int family; } families[] = {
        {"AF_UNIX", AF_UNIX}, {"AF_INET", AF_INET}, {"AF_INET6", AF_INET6},
        {"AF_NETLINK", AF_NETLINK}, {"AF_PACKET", AF_PACKET},
    };
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        int type = families[i].family == AF_PACKET ? SOCK_DGRAM
                 : families[i].family == AF_NETLINK ? SOCK_RAW : SOCK_STREAM;
        int fd = socket(families[i].family, type, 0);
        char label[64];
        snprintf(label, sizeof label, "socket(%s)", families[i].name);
        report(label, fd);
        if (fd >= 0)
            close(fd);
    }
    /* Unfiltered, each of these fails with EBADF or EINVAL. */
    report("fsync(-1)", fsync(-1));
    report("fdatasync(-1)", fdatasync(-1));
    report("syncfs(-1)", syncfs(-1));
    report("sync_file_range(-1)", sync_file_range(-1, 0, 0, 0));
    report("msync(bad flags)", msync(NULL, 0, 0xff));
    /* On a pipe, unfiltered: EINVAL; neutered: ok. */
    int pipefd[2];
    if (pipe(pipefd) == 0) {
        report("fsync(pipe)", fsync(pipefd[0]));
        report("fdatasync(pipe)", fdatasync(pipefd[0]));
        report("sync_file_range(pipe, bad flags)", sync_file_range(pipefd[0], 0, 0, 0xff));
    }
    sync();
    int fd = open("/tmp/process-opts-sync", O_WRONLY | O_CREAT | O_SYNC, 0600);
    report("open(O_SYNC)", fd);
    if (fd >= 0)
        close(fd);
    fd = open("/tmp/process-opts-dsync", O_WRONLY | O_CREAT | O_DSYNC, 0600);
    report("open(O_DSYNC)", fd);
    if (fd >= 0)
        close(fd);
    fd = open("/tmp/process-opts-plain", O_WRONLY | O_CREAT, 0600);
    report("open(plain)", fd);
    if (fd >= 0)
        close(fd);
    return 0;
}
