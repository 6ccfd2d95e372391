package restore

import (
	"github.com/mntv2/mntv2/forest"
	"golang.org/x/sys/unix"
)

// fdSlack is what a restore needs beyond a fd per handle and namespace:
// stdio, the runtime's, the images directory, extractions, the pin dir.
const fdSlack = 32

// FdsFor is the fd table a restore of f needs, at most (a fd per mount,
// per superblock source and per namespace).
func FdsFor(f *forest.Forest) int { return 2*f.Len() + len(f.Namespaces) + fdSlack }

// GrowFdTable makes this process's fd table hold n fds, waiting for one
// RCU grace period (see growFdTable), unless the table a process starts
// with (64) holds them. Callers that know a restore is coming run it in a
// goroutine while they read and plan, so Apply finds the table grown.
func GrowFdTable(n int) {
	if n <= 64 {
		return
	}
	// Any open fd will do to dup from; fd 0 may be closed.
	fd, err := unix.Open("/", unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	growFdTable(fd, n)
	unix.Close(fd)
}

// growFdTable makes the fd table hold n fds at once. The kernel grows it
// by doubling, and in a multi-threaded process each growth waits for an
// RCU grace period (fs/file.c expand_fdtable; 1.5 to 20 ms on the test
// machine): a dozen of them cost more than a thousand mounts. One dup to
// fd n-1 or above grows it once; a restore that fits the first 64 fds
// waits for none. Beyond RLIMIT_NOFILE the dup fails, which is harmless.
func growFdTable(fd, n int) {
	if n <= 64 {
		return // the table every process starts with
	}
	// F_DUPFD takes the lowest free fd from n-1 up: it never replaces one
	// in use, as dup3 onto n-1 would.
	if nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, n-1); err == nil {
		unix.Close(nfd)
	}
}
