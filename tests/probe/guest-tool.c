/* nixspawn's hostile guest program for the privileged tests: the things a
 * guest can do to the administrator who manages it. Built static so it runs
 * in any tree:  cc -static -O2 -o guest-tool guest-tool.c
 *
 *   guest-tool notify STATUS COMM
 *       Rename ourselves to COMM, send READY=1 and STATUS=STATUS to
 *       $NOTIFY_SOCKET, then wait forever (run it as PID 1).
 *   guest-tool tiocsti TEXT
 *       Push TEXT into the input of every terminal we can reach (fds 0-2
 *       and /dev/tty) with TIOCSTI; report what the kernel said.
 *   guest-tool watch ROUNDS DIR
 *       For each round: learn the next PID of our PID namespace, say so in
 *       DIR/ready-N, wait for that PID to appear, stop it with ptrace at
 *       the earliest moment and report its capabilities and seccomp mode
 *       (DIR/seen-N). Run it as PID 1 of a guest nothing else runs in. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int notify(const char *status, const char *comm) {
    prctl(PR_SET_NAME, comm);
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path) {
        fprintf(stderr, "no NOTIFY_SOCKET\n");
        return 1;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof sa.sun_path)
        return 1;
    memcpy(sa.sun_path, path, len);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    char msg[4096];
    int n = snprintf(msg, sizeof msg, "READY=1\nSTATUS=%s", status);
    if (fd < 0 || sendto(fd, msg, n, 0, (struct sockaddr *)&sa, offsetof(struct sockaddr_un, sun_path) + len) < 0) {
        perror("notify");
        return 1;
    }
    for (;;)
        pause();
}

static void push(const char *what, int fd, const char *text) {
    int ok = 1, err = 0;
    for (const char *c = text; *c; c++)
        if (ioctl(fd, TIOCSTI, c) < 0) {
            ok = 0;
            err = errno;
            break;
        }
    printf("%s: %s\n", what, ok ? "injected" : strerrorname_np(err));
}

static int tiocsti(const char *text) {
    char name[16];
    for (int fd = 0; fd <= 2; fd++) {
        snprintf(name, sizeof name, "fd%d", fd);
        push(name, fd, text);
    }
    int tty = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (tty < 0)
        printf("/dev/tty: %s\n", strerrorname_np(errno));
    else
        push("/dev/tty", tty, text);
    printf("sid=%d pid=%d tty0=%s\n", getsid(0), getpid(), isatty(0) ? ttyname(0) : "-");
    fflush(stdout);
    return 0;
}

/* The Cap*, Seccomp and NoNewPrivs lines of /proc/PID/status, one line. */
static int status_of(pid_t pid, char *out, size_t size) {
    char path[64], buf[8192];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    out[0] = 0;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
        if (!strncmp(line, "Cap", 3) || !strncmp(line, "Seccomp:", 8) || !strncmp(line, "NoNewPrivs", 10)) {
            strncat(out, line, size - strlen(out) - 2);
            strncat(out, " ", size - strlen(out) - 1);
        }
    return 0;
}

static void put(const char *dir, const char *file, int round, const char *text) {
    char path[512], tmp[520];
    snprintf(path, sizeof path, "%s/%s-%d", dir, file, round);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fputs(text, f);
    fclose(f);
    rename(tmp, path);
}

static int watch(int rounds, const char *dir) {
    for (int round = 0; round < rounds; round++) {
        pid_t probe = fork();
        if (probe == 0)
            _exit(0);
        waitpid(probe, NULL, 0);
        pid_t next = probe + 1;
        char line[64];
        snprintf(line, sizeof line, "%d\n", next);
        put(dir, "ready", round, line);
        char first[2048] = "", stopped[2048] = "", report[4400];
        double deadline = now() + 30;
        while (status_of(next, first, sizeof first) < 0)
            if (now() > deadline) {
                put(dir, "seen", round, "timeout\n");
                goto next_round;
            }
        /* SEIZE and INTERRUPT rather than ATTACH: no SIGSTOP that could
         * outlive the detach, no extra SIGTRAP after its execve. */
        const char *attach = "ok";
        if (ptrace(PTRACE_SEIZE, next, NULL, NULL) < 0) {
            attach = strerrorname_np(errno);
        } else {
            int st = 0, sig = 0;
            ptrace(PTRACE_INTERRUPT, next, NULL, NULL);
            if (waitpid(next, &st, __WALL) == next && WIFSTOPPED(st)) {
                status_of(next, stopped, sizeof stopped);
                /* A signal stopped it before our interrupt did: pass it on. */
                if ((st >> 16) == 0)
                    sig = WSTOPSIG(st);
                ptrace(PTRACE_DETACH, next, NULL, (void *)(long)sig);
            }
        }
        snprintf(report, sizeof report, "pid %d\nfirst: %s\nattach: %s\nstopped: %s\n", next, first, attach, stopped);
        put(dir, "seen", round, report);
    next_round:
        /* Reap whatever was reparented to us meanwhile. */
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
    }
    for (;;)
        pause();
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "notify"))
        return notify(argv[2], argv[3]);
    if (argc == 3 && !strcmp(argv[1], "tiocsti"))
        return tiocsti(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "watch"))
        return watch(atoi(argv[2]), argv[3]);
    fprintf(stderr, "usage: guest-tool notify STATUS COMM | tiocsti TEXT | watch ROUNDS DIR\n");
    return 2;
}
