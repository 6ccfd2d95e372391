package restore

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/mntv2/mntv2/internal/nsexec"
	"golang.org/x/sys/unix"
)

// prepare opens the base namespace and the pin dir and starts the workers.
func (a *applier) prepare() error {
	fail := func(what string, err error) error {
		return &StepError{Index: -1, Step: step("prepare"), What: what, Err: err}
	}
	if err := a.prepareBase(); err != nil {
		return fail("this mount namespace", err)
	}
	if a.opt.Live != nil {
		if err := a.startLive(a.plan.Namespaces); err != nil {
			return fail("restored namespaces", err)
		}
		return nil
	}
	userNS, err := openUserNS(a.plan, a.opt)
	if err != nil {
		return fail("--userns", err)
	}
	a.userNS = userNS
	if a.plan.Len() > 0 {
		// One restore at a time per root: a rollback removes the
		// mountpoints it made in the root, and removing a mountpoint
		// detaches what another namespace has mounted on it.
		rfd, err := unix.Open(a.opt.Root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail("restore root "+a.opt.Root, sysErr("open", err))
		}
		a.rootLock = rfd
		if err := unix.Flock(rfd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
			return fail("restore root "+a.opt.Root, fmt.Errorf("in use by another mntv2 restore (flock: %w)", err))
		}
		if err := os.MkdirAll(a.opt.PinDir, 0o700); err != nil {
			return fail("pin dir "+a.opt.PinDir, err)
		}
		pd, err := unix.Open(a.opt.PinDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail("pin dir "+a.opt.PinDir, sysErr("open", err))
		}
		a.pinDir = pd
	}
	for _, id := range a.plan.Namespaces {
		w, err := startWorker(id, a.baseNS)
		if err != nil {
			return fail(fmt.Sprintf("namespace %d", id), err)
		}
		a.workers[id] = w
	}
	return nil
}

// prepareBase opens the base namespace (this thread's) and grows the fd
// table.
func (a *applier) prepareBase() error {
	fd, err := unix.Open("/proc/thread-self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return sysErr("open", err)
	}
	a.baseNS = fd
	growFdTable(fd, len(a.plan.Handles)+len(a.plan.Namespaces)+fdSlack)
	return nil
}

// rollback undoes a failed restore: pins, mounts on persistent
// mountpoints, then the mountpoints mntv2 created.
func (a *applier) rollback() {
	a.stopFills()
	for i := len(a.deleted) - 1; i >= 0; i-- {
		if err := a.deleted[i].remove(); err != nil {
			a.opt.Log.Warn("rollback: cannot remove a deleted root mntv2 made again", "path", a.deleted[i].path, "err", err)
		}
	}
	for i := len(a.pins) - 1; i >= 0; i-- {
		p := filepath.Join(a.opt.PinDir, a.pins[i])
		_ = unix.Unmount(p, unix.MNT_DETACH)
		if err := unix.Unlinkat(a.pinDir, a.pins[i], 0); err != nil {
			a.opt.Log.Warn("rollback: cannot remove pin", "pin", p, "err", err)
		}
	}
	// A mountpoint cannot be removed while something is mounted on it in
	// any namespace: detach those mounts inside their namespaces first.
	for ns, hs := range a.attached {
		w := a.workers[ns]
		if w == nil {
			continue
		}
		_ = w.run(func() error {
			// The worker's root has no /proc: reach each mount by fchdir.
			for i := len(hs) - 1; i >= 0; i-- {
				if a.fds[hs[i]] >= 0 && unix.Fchdir(a.fds[hs[i]]) == nil {
					_ = unix.Unmount(".", unix.MNT_DETACH)
				}
			}
			return unix.Chdir("/")
		})
	}
	for i := len(a.created) - 1; i >= 0; i-- {
		c := a.created[i]
		flags := 0
		if c.Dir {
			flags = unix.AT_REMOVEDIR
		}
		if err := unix.Unlinkat(c.Dirfd, c.Name, flags); err != nil {
			a.opt.Log.Warn("rollback: cannot remove a mountpoint mntv2 created", "name", c.Name, "err", err)
		}
	}
}

// release closes every fd and ends every worker, after success or rollback.
func (a *applier) release() {
	a.stopFills() // before any fd it writes through is closed
	for _, d := range a.deleted {
		d.close()
	}
	a.deleted = nil
	if a.dirCache.fd >= 0 {
		unix.Close(a.dirCache.fd)
		a.dirCache.fd = -1
	}
	for _, c := range a.created {
		unix.Close(c.Dirfd)
	}
	a.created = nil
	if a.closeAsync {
		go closeAll(a.dropped)
	} else {
		closeAll(a.dropped)
	}
	a.dropped = nil
	closeAll(a.fds)
	for i := range a.fds {
		a.fds[i] = -1
	}
	for _, fd := range a.nsFds {
		unix.Close(fd)
	}
	for _, w := range a.workers {
		if a.closeAsync {
			// A completion that succeeded does not wait for its
			// workers' ends either: CRIU waits meanwhile.
			w.end()
		} else {
			w.stop()
		}
	}
	for _, fd := range a.idmapNS {
		unix.Close(fd)
	}
	a.idmapNS = map[string]int{}
	for _, o := range a.openers {
		o.Close()
	}
	a.openers = map[uint64]*nsexec.Opener{}
	for _, fd := range []int{a.baseNS, a.pinDir, a.rootLock, a.userNS} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// closeAll closes the fds that are not -1.
func closeAll(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}
