/* nixspawn's container probe: tries system calls and reports, one line
 * each, what the container's seccomp filter and capabilities let happen.
 * Arguments are chosen so an allowed call fails harmlessly with the
 * kernel's own error (bad flags, bad fd, missing path) and changes nothing,
 * while a filtered one returns the filter's errno. Built static so it runs
 * in any tree:  cc -static -O2 -o probe probe.c  (and with -m32 or -mx32
 * for the other x86 ABIs; gcc-multilib). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <linux/audit.h>
#include <linux/keyctl.h>
#include <linux/netlink.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void report(const char *name, long ret) {
    if (ret >= 0)
        printf("%s: ok\n", name);
    else
        printf("%s: %s\n", name, strerrorname_np(errno));
}

#define TRY(name, call) report(name, (long)(call))

/* `probe signals`: what PID 1 inherited besides privileges: its signal
 * mask and dispositions, and its parent-death signal. */
static int signals(void) {
    int pdeathsig = -1;
    TRY("prctl(PR_GET_PDEATHSIG)", prctl(PR_GET_PDEATHSIG, &pdeathsig));
    printf("PDEATHSIG: %d\n", pdeathsig);
    FILE *status = fopen("/proc/self/status", "r");
    char line[256];
    while (status && fgets(line, sizeof line, status))
        if (!strncmp(line, "SigBlk", 6) || !strncmp(line, "SigIgn", 6) || !strncmp(line, "SigCgt", 6))
            fputs(line, stdout);
    return 0;
}

/* Open `path` read-only and report what reading it gave (its first bytes,
 * printable ones only) or the error. */
static void try_read(const char *label, const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        printf("%s: %s\n", label, strerrorname_np(errno));
        return;
    }
    char buf[48] = {0};
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 0) {
        printf("%s: read %s\n", label, strerrorname_np(errno));
        return;
    }
    for (ssize_t i = 0; i < n; i++)
        if (buf[i] < 32 || buf[i] > 126)
            buf[i] = '.';
    printf("%s: ok %s\n", label, buf);
}

/* `probe devices NODE MAJOR MINOR`: what the device policy lets happen.
 * The standard nodes and a pty must work; a block device node (NODE, made
 * beforehand, and one made here with mknod for MAJOR:MINOR) must not. */
static int devices(int argc, char **argv) {
    if (argc < 5)
        return 2;
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    TRY("write /dev/null", fd < 0 ? -1 : write(fd, "x", 1));
    fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    char c;
    TRY("read /dev/urandom", fd < 0 ? -1 : read(fd, &c, 1));
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    const char *peer = master >= 0 && grantpt(master) == 0 && unlockpt(master) == 0 ? ptsname(master) : NULL;
    TRY("pty", peer ? open(peer, O_RDWR | O_NOCTTY | O_CLOEXEC) : -1);
    try_read("read node", argv[2]);
    dev_t dev = makedev(strtoul(argv[3], NULL, 10), strtoul(argv[4], NULL, 10));
    unlink("/dev/nixspawn-probe-blk");
    TRY("mknod block", mknod("/dev/nixspawn-probe-blk", S_IFBLK | 0600, dev));
    try_read("read mknod'ed", "/dev/nixspawn-probe-blk");
    unlink("/dev/nixspawn-probe-blk");
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "signals"))
        return signals();
    if (argc > 1 && !strcmp(argv[1], "devices"))
        return devices(argc, argv);
    /* Denied by nspawn's default filter. */
    TRY("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0xdead0000UL));
#ifdef SYS_kexec_file_load /* not on i386 */
    TRY("kexec_file_load", syscall(SYS_kexec_file_load, -1, -1, 0, NULL, 0xdead0000UL));
#endif
    TRY("init_module", syscall(SYS_init_module, NULL, 0, ""));
    TRY("finit_module", syscall(SYS_finit_module, -1, "", 0));
    TRY("delete_module", syscall(SYS_delete_module, "nixspawn-probe-none", 0));
    TRY("swapon", syscall(SYS_swapon, "/nonexistent-swap", 0));
    TRY("swapoff", syscall(SYS_swapoff, "/nonexistent-swap"));
    TRY("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, NULL, 0));
    TRY("keyctl", syscall(SYS_keyctl, 0x7fffffff, 0, 0, 0, 0));
    TRY("add_key", syscall(SYS_add_key, NULL, NULL, NULL, 0, 0));
    TRY("bpf", syscall(SYS_bpf, -1, NULL, 0));
    TRY("perf_event_open", syscall(SYS_perf_event_open, NULL, -1, -1, -1, 0));
    TRY("quotactl", syscall(SYS_quotactl, 0, NULL, 0, NULL));
    TRY("fanotify_init", syscall(SYS_fanotify_init, 0xffffffffU, 0));
    TRY("clock_settime", syscall(SYS_clock_settime, CLOCK_REALTIME, NULL));
    TRY("settimeofday", syscall(SYS_settimeofday, NULL, NULL));
    TRY("adjtimex", syscall(SYS_adjtimex, NULL));
    TRY("mlock", syscall(SYS_mlock, NULL, 0));
    TRY("mlockall", syscall(SYS_mlockall, 0));
    TRY("acct", syscall(SYS_acct, "/nonexistent-acct"));
    TRY("syslog", syscall(SYS_syslog, 10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0));
    TRY("ioperm", syscall(SYS_ioperm, 0, 0, 0));
    TRY("iopl", syscall(SYS_iopl, 4));
    TRY("modify_ldt", syscall(SYS_modify_ldt, 0xff, NULL, 0));
    TRY("pkey_alloc", syscall(SYS_pkey_alloc, 0xffffffffUL, 0));
    TRY("lookup_dcookie", syscall(SYS_lookup_dcookie, 0, NULL, 0));
    TRY("userfaultfd", syscall(SYS_userfaultfd, 0xffffffff));
    TRY("process_vm_readv", syscall(SYS_process_vm_readv, 0, NULL, 0, NULL, 0, 0xff));
    TRY("ptrace", syscall(SYS_ptrace, 0x7fff, 0, NULL, NULL));
    TRY("reboot", syscall(SYS_reboot, 0, 0, 0, NULL)); /* bad magic: EINVAL if allowed */
    TRY("vhangup", 0); /* never called: it would hang up our own terminal */
    /* Allowed by the default filter. */
    TRY("mount", syscall(SYS_mount, NULL, "/nonexistent-mount", NULL, MS_REMOUNT, NULL));
    TRY("umount2", syscall(SYS_umount2, "/nonexistent-mount", 0));
    TRY("pivot_root", syscall(SYS_pivot_root, "/nonexistent-a", "/nonexistent-b"));
    TRY("open_tree", syscall(SYS_open_tree, -1, "", 0xffffffffU));
    TRY("unshare", syscall(SYS_unshare, 0));
    TRY("setns", syscall(SYS_setns, -1, 0));
    TRY("clone3", syscall(SYS_clone3, NULL, 0));
    TRY("personality", syscall(SYS_personality, 0xffffffffUL));
    TRY("sethostname", syscall(SYS_sethostname, NULL, 1000000));
    TRY("io_uring_setup", syscall(SYS_io_uring_setup, 0, NULL));
    TRY("name_to_handle_at", syscall(SYS_name_to_handle_at, -1, "", NULL, NULL, 0));
    TRY("getrandom", syscall(SYS_getrandom, NULL, 0, 0));
    TRY("seccomp", syscall(SYS_seccomp, 0xff, 0, NULL));
    TRY("socket(AF_NETLINK, NETLINK_AUDIT)", socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_AUDIT));
    TRY("socket(AF_NETLINK, NETLINK_ROUTE)", socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
    TRY("socket(AF_INET, SOCK_DGRAM)", socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
#ifdef __i386__
    /* glibc's socket() is socketcall(SYS_SOCKET) on i386; the direct call too. */
    TRY("syscall(SYS_socket, AF_NETLINK, NETLINK_AUDIT)", syscall(SYS_socket, AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_AUDIT));
    /* The multiplexed socket call, which 32-bit programs may use instead. */
    long audit_args[3] = {AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_AUDIT};
    TRY("socketcall(SYS_SOCKET, AF_NETLINK, NETLINK_AUDIT)", syscall(SYS_socketcall, 1, audit_args));
    TRY("socketcall(bad call)", syscall(SYS_socketcall, 0x7fff, audit_args));
#endif
    TRY("unknown syscall 1000", syscall(1000));

    /* What the kernel says about our privileges. */
    FILE *status = fopen("/proc/self/status", "r");
    char line[256];
    while (status && fgets(line, sizeof line, status))
        if (!strncmp(line, "Cap", 3) || !strncmp(line, "NoNewPrivs", 10) || !strncmp(line, "Seccomp:", 8))
            fputs(line, stdout);
    return 0;
}
