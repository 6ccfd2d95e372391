// Package mntns holds what mntv2 does with namespaces as nsfs files: run
// code on a thread inside a mount namespace, and the namespace ioctls
// (ids, owners, types).
package mntns

import (
	"runtime"
	"unsafe"

	"github.com/mntv2/mntv2/internal/sysx"
	"golang.org/x/sys/unix"
)

// Run runs fn on a new OS thread that has entered the mount namespace nsfd
// (with its root and cwd at the namespace's root). The thread never
// returns to the Go scheduler's pool: it exits with the goroutine.
func Run(nsfd int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			errc <- sysx.Wrap("unshare(CLONE_FS)", err)
			return
		}
		if err := unix.Setns(nsfd, unix.CLONE_NEWNS); err != nil {
			errc <- sysx.Wrap("setns(CLONE_NEWNS)", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// The ioctls of nsfs files (linux/nsfs.h).
const (
	nsGetUserns  = 0xb701     // _IO(0xb7, 0x1)
	nsGetNstype  = 0xb703     // _IO(0xb7, 0x3)
	nsGetMntnsID = 0x8008b705 // _IOR(0xb7, 0x5, __u64)
)

// ID is the id of the mount namespace of an nsfs fd (NS_GET_MNTNS_ID,
// Linux 6.10): ids only grow, unlike inode numbers.
func ID(nsfd int) (uint64, error) {
	var id uint64
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(nsfd), nsGetMntnsID, uintptr(unsafe.Pointer(&id))); e != 0 {
		return 0, e
	}
	return id, nil
}

// Owner opens the user namespace that owns the namespace of an nsfs fd
// (NS_GET_USERNS); the caller closes it.
func Owner(nsfd int) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(nsfd), nsGetUserns, 0)
	if e != 0 {
		return -1, sysx.Wrap("ioctl(NS_GET_USERNS)", e)
	}
	return int(r), nil
}

// Type is the kind of namespace of an nsfs fd, a CLONE_NEW* flag
// (NS_GET_NSTYPE); an error when fd is no nsfs file.
func Type(fd int) (int, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nsGetNstype, 0)
	if e != 0 {
		return 0, sysx.Wrap("ioctl(NS_GET_NSTYPE)", e)
	}
	return int(r), nil
}
