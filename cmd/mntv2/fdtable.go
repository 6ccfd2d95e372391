package main

/*
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

// mntv2_grow_fdtable runs before the Go runtime starts, while the process
// has a single thread: then the kernel grows the fd table without waiting
// for an RCU grace period (fs/file.c expand_fdtable), which a
// multi-threaded process waits for at every growth (1.5 to 20 ms on the
// test machine). A restore holds a fd per mount, so the table is grown
// here once, for free, to 32768 fds (or the hard limit). The soft limit
// is raised for the dup and put back: the Go runtime raises it itself.
__attribute__((constructor)) static void mntv2_grow_fdtable(void) {
	struct rlimit rl, raised;
	rlim_t want = 1 << 15;
	int fd;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want)
		want = rl.rlim_max;
	if (want <= 64)
		return;
	raised = rl;
	if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur < want) {
		raised.rlim_cur = want;
		if (setrlimit(RLIMIT_NOFILE, &raised) != 0)
			return;
	}
	fd = open("/", O_PATH | O_CLOEXEC);
	if (fd >= 0) {
		// The lowest free fd from want-1 up: never one inherited.
		int high = fcntl(fd, F_DUPFD_CLOEXEC, (int)want - 1);
		if (high >= 0)
			close(high);
		close(fd);
	}
	if (raised.rlim_cur != rl.rlim_cur)
		setrlimit(RLIMIT_NOFILE, &rl);
}
*/
import "C"
