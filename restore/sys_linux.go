package restore

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/mntv2/mntv2/forest"
	"golang.org/x/sys/unix"
)

func (a *applier) stepError(i int, err error) error {
	if se := (*StepError)(nil); errors.As(err, &se) {
		return se // already named (a fill's, met by a later step)
	}
	s := a.plan.Steps[i]
	se := &StepError{Index: i, Step: s, Err: err}
	var sys *sysError
	if errors.As(err, &sys) {
		se.Syscall = sys.Call
		if err == error(sys) {
			se.Err = sys.Err
		} else {
			se.inErr = true // the context around it says on what
		}
	}
	h := s.Handle
	switch {
	case s.Mount != 0:
		se.What = fmt.Sprintf("namespace %d, mount %d (%s)", s.NS, s.Mount, a.plan.Handles[h].What)
	case h != NoHandle:
		se.What = a.plan.Handles[h].What
	default:
		se.What = fmt.Sprintf("namespace %d", s.NS)
	}
	return se
}

// sys counts a mount syscall and fails it on purpose when asked to.
func (a *applier) sys(call string, fn func() error) error {
	a.calls++
	if a.calls == a.opt.Hooks.FailSyscall {
		return sysErr(call, ErrInjected)
	}
	return sysErr(call, fn())
}

// sysFd is sys for a syscall that returns an fd.
func (a *applier) sysFd(call string, fn func() (int, error)) (int, error) {
	fd := -1
	err := a.sys(call, func() error {
		var err error
		fd, err = fn()
		return err
	})
	return fd, err
}

func procFd(fd int) string { return "/proc/thread-self/fd/" + strconv.Itoa(fd) }

func (a *applier) propagation(s Step, call string, flag uintptr) error {
	return a.sys(call, func() error { return unix.Mount("", procFd(a.fds[s.Handle]), "", flag, "") })
}

// mountAttr is the mount_setattr argument that sets exactly flags.
func mountAttr(f forest.Flags) *unix.MountAttr {
	attr := &unix.MountAttr{Attr_clr: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV |
		unix.MOUNT_ATTR_NOEXEC | unix.MOUNT_ATTR__ATIME | unix.MOUNT_ATTR_NODIRATIME | unix.MOUNT_ATTR_NOSYMFOLLOW}
	set := []struct {
		flag forest.Flags
		attr uint64
	}{
		{forest.ReadOnly, unix.MOUNT_ATTR_RDONLY}, {forest.NoSuid, unix.MOUNT_ATTR_NOSUID},
		{forest.NoDev, unix.MOUNT_ATTR_NODEV}, {forest.NoExec, unix.MOUNT_ATTR_NOEXEC},
		{forest.NoDiratime, unix.MOUNT_ATTR_NODIRATIME}, {forest.NoSymFollow, unix.MOUNT_ATTR_NOSYMFOLLOW},
		{forest.NoAtime, unix.MOUNT_ATTR_NOATIME}, {forest.StrictAtime, unix.MOUNT_ATTR_STRICTATIME},
	}
	for _, x := range set {
		if f&x.flag != 0 {
			attr.Attr_set |= x.attr
		}
	}
	return attr
}
