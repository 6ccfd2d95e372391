package main

/*
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "prepared.h"

// Everything here runs before the Go runtime starts, when CRIU runs mntv2
// as its action script (no arguments, CRTOOLS_SCRIPT_ACTION set): CRIU runs
// the script for about seven actions of every restore and at dump, and
// starting the runtime and the packages' init costs milliseconds each time.
// plugin/resident_linux.go describes the resident hook this half starts
// (pre-restore) and talks to (post-restore).

// Set in the resident's process: the pipe its parent waits on, and CRIU;
// the token of the prepared rewrite put in place (then there is no pipe).
int mntv2_resident_report = -1;
int mntv2_resident_criu = -1;
char mntv2_prepared_token[33];

static socklen_t mntv2_resident_addr(struct sockaddr_un *sa, pid_t criu) {
	int n;

	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	// plugin.ResidentName
	n = snprintf(sa->sun_path + 1, sizeof(sa->sun_path) - 1, "mntv2-hook-%d", (int)criu);
	return offsetof(struct sockaddr_un, sun_path) + 1 + n;
}

// mntv2_recover puts the original images back (mntv2 criu-images
// restore): 0 if it did.
static int mntv2_recover(char **envp) {
	const char *dir = getenv("CRTOOLS_IMAGE_DIR");
	pid_t pid = -1;
	int st = -1;

	if (dir != NULL)
		pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY | O_CLOEXEC);

		if (null >= 0)
			dup2(null, STDOUT_FILENO);
		execle("/proc/self/exe", "mntv2", "criu-images", "restore", dir, (char *)NULL, envp);
		_exit(127);
	}
	if (pid > 0)
		while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
			;
	return pid > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

// mntv2_recover_and_fail runs when the resident died before it answered:
// it may have rewritten the images, so put the originals back, then fail
// the action (CRIU aborts the restore).
static void mntv2_recover_and_fail(char **envp) {
	mntv2_recover(envp);
	_exit(1);
}

// mntv2_pre_restore forks: the child goes on into the Go runtime as the
// resident (plugin.Resident); this process exits with the status it sends.
static void mntv2_pre_restore(char **envp) {
	pid_t criu = getppid(), child;
	int p[2];
	ssize_t n;
	char st, token[33] = {0};

	// A rewrite prepared at dump (plugin/prepared.go): put in place here,
	// CRIU goes on at once, and the resident takes it over.
	switch (mntv2_swap_prepared(getenv("CRTOOLS_IMAGE_DIR"), criu, token)) {
	case MNTV2_PREPARED_SWAPPED:
		child = fork();
		if (child == 0) {
			setsid();
			mntv2_resident_criu = criu;
			memcpy(mntv2_prepared_token, token, sizeof(token));
			return;
		}
		if (child > 0) {
			// In CRIU's log, where the Go rewrite logs its own line.
			fprintf(stderr, "mntv2: pre-restore: the rewrite prepared at dump is in place: CRIU restores the mounts it must, "
					"without sharing; mntv2 makes the rest at post-restore (resident %d)\n", (int)child);
			_exit(0);
		}
		// No resident: post-restore (its own process) takes the
		// rewrite from the manifest; if CRIU dies first, the next
		// pre-restore puts the originals back.
		fprintf(stderr, "mntv2: pre-restore: prepared rewrite in place; no resident hook (fork: %s)\n", strerror(errno));
		_exit(0);
	case MNTV2_PREPARED_UNDO:
		if (mntv2_recover(envp) != 0) {
			fprintf(stderr, "mntv2: pre-restore: a prepared rewrite was cut off and could not be undone\n");
			_exit(1);
		}
		break;
	}
	if (pipe2(p, O_CLOEXEC) < 0)
		return; // no resident: Go runs the classic hook
	child = fork();
	if (child < 0) {
		close(p[0]);
		close(p[1]);
		return;
	}
	if (child == 0) {
		close(p[0]);
		setsid();
		mntv2_resident_report = p[1];
		mntv2_resident_criu = criu;
		return;
	}
	close(p[1]);
	do
		n = read(p[0], &st, 1);
	while (n < 0 && errno == EINTR);
	if (n == 1)
		_exit((unsigned char)st);
	fprintf(stderr, "mntv2: pre-restore died before it finished: putting the original images back\n");
	mntv2_recover_and_fail(envp);
}

// mntv2_connect connects to the resident of this CRIU (the parent); -1 if
// it has none.
static int mntv2_connect(void) {
	struct sockaddr_un sa;
	socklen_t len = mntv2_resident_addr(&sa, getppid()), crl;
	struct ucred cr;
	int s;

	s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -1;
	crl = sizeof(cr);
	if (connect(s, (struct sockaddr *)&sa, len) < 0 || getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cr, &crl) < 0 ||
	    cr.uid != 0) {
		close(s);
		return -1;
	}
	return s;
}

// mntv2_send_env sends the environment, and extra (another NAME=VALUE)
// if set, in one message, with this process's stdin, stdout and stderr if
// stdio is set; 0 if it did.
static int mntv2_send_env(int s, char **envp, int stdio, const char *extra) {
	struct msghdr msg;
	struct iovec iov;
	struct cmsghdr *c;
	int fds[3] = {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO};
	char cbuf[CMSG_SPACE(sizeof(fds))], *buf, **e;
	size_t n = 0;
	ssize_t r;

	for (e = envp; *e != NULL; e++)
		n += strlen(*e) + 1;
	if (extra != NULL)
		n += strlen(extra) + 1;
	if (n >= 65536)
		return -1; // more than the resident reads
	buf = malloc(n + 1);
	if (buf == NULL)
		return -1;
	n = 0;
	for (e = envp; *e != NULL; e++) {
		size_t l = strlen(*e) + 1;

		memcpy(buf + n, *e, l);
		n += l;
	}
	if (extra != NULL) {
		memcpy(buf + n, extra, strlen(extra) + 1);
		n += strlen(extra) + 1;
	}
	memset(&msg, 0, sizeof(msg));
	iov.iov_base = buf;
	iov.iov_len = n;
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	if (stdio) {
		memset(cbuf, 0, sizeof(cbuf));
		msg.msg_control = cbuf;
		msg.msg_controllen = sizeof(cbuf);
		c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(fds));
		memcpy(CMSG_DATA(c), fds, sizeof(fds));
	}
	r = sendmsg(s, &msg, MSG_NOSIGNAL);
	free(buf);
	return r < 0 ? -1 : 0;
}

// mntv2_post_restore hands the action to the resident of this CRIU, if it
// has one (else it returns, and Go runs it), and exits with its answer.
static void mntv2_post_restore(char **envp) {
	ssize_t r;
	char st;
	int s = mntv2_connect();

	if (s < 0)
		return;
	if (mntv2_send_env(s, envp, 1, NULL) < 0) {
		close(s);
		return;
	}
	do
		r = recv(s, &st, 1, 0);
	while (r < 0 && errno == EINTR);
	if (r != 1 || st != 'A') {
		close(s);
		return; // refused: this process runs it
	}
	do
		r = recv(s, &st, 1, 0);
	while (r < 0 && errno == EINTR);
	if (r == 1)
		_exit((unsigned char)st);
	fprintf(stderr, "mntv2: the resident hook died during post-restore: putting the original images back\n");
	mntv2_recover_and_fail(envp);
}

// mntv2_post_setup_namespaces tells the resident, if there is one, that
// CRIU's namespaces hold every mount CRIU makes, and exits at once: the
// resident begins the completion there while CRIU restores the tasks
// (restore.PreparedLive.Advance). Nothing waits for an answer: post-restore
// is where a failure is told. The root task is still in the namespace it
// built the others in (CRIU's roots yard) and waits for this action to
// end before it enters its own: that namespace is sent along, for the
// resident to wait until the root task has left it.
static void mntv2_post_setup_namespaces(char **envp) {
	const char *init = getenv("CRTOOLS_INIT_PID");
	char path[64], yard[128] = "MNTV2_YARD_NS=";
	ssize_t n = -1;
	int s;

	if (init != NULL && strlen(init) < 16) {
		snprintf(path, sizeof(path), "/proc/%s/ns/mnt", init);
		n = readlink(path, yard + strlen(yard), sizeof(yard) - strlen(yard) - 1);
	}
	if (n > 0 && (s = mntv2_connect()) >= 0) {
		yard[strlen("MNTV2_YARD_NS=") + n] = '\0';
		mntv2_send_env(s, envp, 0, yard);
		close(s);
	}
	_exit(0);
}

// mntv2_action ends the process before the Go runtime starts for an
// action mntv2 does nothing at (the ones plugin.Hook acts on must be
// listed here), and does the C half of pre-restore and post-restore.
__attribute__((constructor)) static void mntv2_action(int argc, char **argv, char **envp) {
	const char *action = getenv("CRTOOLS_SCRIPT_ACTION"), *off = getenv("MNTV2_RESIDENT");

	(void)argv;
	if (argc != 1 || action == NULL || *action == '\0')
		return;
	if (strcmp(action, "post-dump") == 0)
		return;
	if (strcmp(action, "pre-restore") == 0) {
		if (off == NULL || strcmp(off, "0") != 0)
			mntv2_pre_restore(envp);
		return;
	}
	if (strcmp(action, "post-restore") == 0) {
		mntv2_post_restore(envp);
		return;
	}
	if (strcmp(action, "post-setup-namespaces") == 0)
		mntv2_post_setup_namespaces(envp);
	_exit(0);
}
*/
import "C"

// resident is the resident hook's part of this process, if it is one
// (mntv2_pre_restore forked it): the pipe its parent waits on (-1 when the
// parent did not wait: a prepared rewrite, named prepared, is in place),
// and CRIU (-1: this is no resident).
func resident() (report, criu int, prepared string) {
	return int(C.mntv2_resident_report), int(C.mntv2_resident_criu), C.GoString(&C.mntv2_prepared_token[0])
}
