/* A hostile guest program for tests/hardening.rs: it abuses the notify
 * socket ($NOTIFY_SOCKET, /run/host/notify) the launcher reads.
 *
 *   notify-flood fds COUNT PER   COUNT datagrams, each carrying PER
 *                                descriptors (SCM_RIGHTS), then "sent COUNT"
 *   notify-flood flood PROCS     PROCS processes sending STATUS= datagrams
 *                                as fast as the socket takes them, forever,
 *                                each claiming to be PID 1 (guest root may
 *                                pass any PID of its namespace as its
 *                                credentials), so the launcher acts on each
 *   notify-flood status TEXT [wait]  one STATUS=TEXT datagram (then sleep)
 *
 * Built statically by the test (cc -static), bound into a busybox tree.
 */
#define _GNU_SOURCE /* struct ucred */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_FDS 253 /* SCM_MAX_FD: the most one datagram may carry */

static int connect_notify(void) {
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int s;

	if (!path)
		path = "/run/host/notify";
	strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
	s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		perror("notify socket");
		exit(2);
	}
	return s;
}

static int send_fds(int s, int count, int per) {
	int fds[MAX_FDS];
	char data[] = "X_FLOOD=1";
	union {
		char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
		struct cmsghdr align;
	} u;
	int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC), i, sent = 0;

	if (per > MAX_FDS)
		per = MAX_FDS;
	for (i = 0; i < per; i++)
		fds[i] = devnull;
	for (i = 0; i < count; i++) {
		struct iovec iov = {.iov_base = data, .iov_len = sizeof(data) - 1};
		struct msghdr mh = {
			.msg_iov = &iov,
			.msg_iovlen = 1,
			.msg_control = u.buf,
			.msg_controllen = CMSG_SPACE(sizeof(int) * per),
		};
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * per);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * per);
		if (sendmsg(s, &mh, 0) < 0) {
			perror("sendmsg");
			break;
		}
		sent++;
	}
	return sent;
}

static void flood(int s, int id) {
	union {
		char buf[CMSG_SPACE(sizeof(struct ucred))];
		struct cmsghdr align;
	} u;
	struct ucred cred = {.pid = 1, .uid = getuid(), .gid = getgid()};
	unsigned long n;
	char msg[64];

	for (n = 0;; n++) {
		struct iovec iov = {.iov_base = msg};
		struct msghdr mh = {
			.msg_iov = &iov,
			.msg_iovlen = 1,
			.msg_control = u.buf,
			.msg_controllen = sizeof(u.buf),
		};
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

		iov.iov_len = snprintf(msg, sizeof(msg), "STATUS=flood %d/%lu", id, n);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_CREDENTIALS;
		c->cmsg_len = CMSG_LEN(sizeof(cred));
		memcpy(CMSG_DATA(c), &cred, sizeof(cred));
		/* Without the privilege to speak for PID 1, as ourselves. */
		if (sendmsg(s, &mh, 0) < 0 && errno == EPERM) {
			mh.msg_control = NULL;
			mh.msg_controllen = 0;
			sendmsg(s, &mh, 0);
		}
	}
}

int main(int argc, char **argv) {
	if (argc == 4 && !strcmp(argv[1], "fds")) {
		int s = connect_notify();
		int sent = send_fds(s, atoi(argv[2]), atoi(argv[3]));

		printf("sent %d\n", sent);
		fflush(stdout);
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "flood")) {
		int procs = atoi(argv[2]), i;

		for (i = 1; i < procs; i++)
			if (fork() == 0)
				break;
		flood(connect_notify(), i);
	}
	if ((argc == 3 || argc == 4) && !strcmp(argv[1], "status")) {
		char msg[512];
		int s = connect_notify();

		snprintf(msg, sizeof(msg), "STATUS=%s", argv[2]);
		if (send(s, msg, strlen(msg), 0) < 0)
			return 1;
		if (argc == 4)
			for (;;)
				pause();
		return 0;
	}
	fprintf(stderr, "usage: notify-flood fds COUNT PER | flood PROCS | status TEXT [wait]\n");
	return 2;
}
