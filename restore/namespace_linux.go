package restore

import (
	"fmt"
	"path/filepath"

	"github.com/mntv2/mntv2/internal/mntns"
	"golang.org/x/sys/unix"
)

// createNamespace runs on the namespace's worker: a new mount namespace,
// all private, whose root becomes a private bind of the restore root, or
// (s.From) the detached mount made for it.
func (a *applier) createNamespace(s Step) error {
	var nsfd int
	var err error
	if s.UserNS {
		nsfd, err = a.ownedNamespace()
	} else {
		nsfd, err = a.unshareNewer()
	}
	if err != nil {
		return err
	}
	a.nsFds[s.NS] = nsfd
	if err := a.sys("mount(MS_REC|MS_PRIVATE)", func() error { return unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "") }); err != nil {
		return err
	}
	var root int
	if s.From != NoHandle {
		// Its fd stays the handle's until it is replaced below.
		root = a.fds[s.From]
	} else {
		root, err = a.sysFd("open_tree", func() (int, error) {
			return unix.OpenTree(unix.AT_FDCWD, a.opt.Root, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		})
		if err != nil {
			return fmt.Errorf("restore root %s: %w", a.opt.Root, err)
		}
		defer unix.Close(root)
	}
	// The new root is stacked on the restore root's path in this copy of
	// the namespace it was made from, entered, and pivoted to; the old
	// tree is detached.
	if err := a.sys("move_mount", func() error {
		return unix.MoveMount(root, "", unix.AT_FDCWD, a.opt.Root, unix.MOVE_MOUNT_F_EMPTY_PATH)
	}); err != nil {
		return err
	}
	if err := unix.Chdir(a.opt.Root); err != nil {
		return sysErr("chdir", err)
	}
	if err := a.sys("pivot_root", func() error { return unix.PivotRoot(".", ".") }); err != nil {
		return err
	}
	if err := a.sys("umount2(MNT_DETACH)", func() error { return unix.Unmount(".", unix.MNT_DETACH) }); err != nil {
		return err
	}
	if err := unix.Chdir("/"); err != nil {
		return sysErr("chdir", err)
	}
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return sysErr("open(/)", err)
	}
	if old := a.fds[s.Handle]; old >= 0 {
		unix.Close(old)
	}
	a.fds[s.Handle] = fd
	return nil
}

// unshareNewer makes this thread's new mount namespace, one whose id is
// above the base namespace's (see newerNamespace).
func (a *applier) unshareNewer() (int, error) {
	return a.newerNamespace(func(try int) (int, error) {
		// Retries are not counted: the count of mount syscalls stays the
		// same from run to run (fault injection relies on it).
		unshare := func() error { return unix.Unshare(unix.CLONE_NEWNS) }
		var err error
		if try == 0 {
			err = a.sys("unshare(CLONE_NEWNS)", unshare)
		} else {
			err = sysErr("unshare(CLONE_NEWNS)", unshare())
		}
		if err != nil {
			return -1, err
		}
		nsfd, err := unix.Open("/proc/thread-self/ns/mnt", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, sysErr("open(/proc/thread-self/ns/mnt)", err)
		}
		return nsfd, nil
	})
}

// newerNamespace makes a mount namespace with create, which this thread is
// in when it returns, until it has an id above the base namespace's: the
// kernel binds an nsfs file of a mount namespace (the pin) only into an
// older namespace (fs/namespace.c mnt_ns_loop compares the ids). Linux 6.18
// hands out namespace ids from per-CPU batches, so a namespace made later
// on another CPU can get a smaller id; then it is made again on each CPU in
// turn (a process create starts inherits the CPU too). This thread dies with
// its worker, so its affinity does not matter afterwards.
func (a *applier) newerNamespace(create func(try int) (int, error)) (int, error) {
	base, baseErr := mntns.ID(a.baseNS)
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return -1, sysErr("sched_getaffinity", err)
	}
	var cpus []int
	for cpu := 0; cpu < 1024; cpu++ {
		if set.IsSet(cpu) {
			cpus = append(cpus, cpu)
		}
	}
	for try := 0; ; try++ {
		nsfd, err := create(try)
		if err != nil {
			return -1, err
		}
		id, err := mntns.ID(nsfd)
		if baseErr != nil || err != nil || id > base {
			return nsfd, nil // no ids (before 6.10): they were monotonic
		}
		unix.Close(nsfd)
		if err := unix.Setns(a.baseNS, unix.CLONE_NEWNS); err != nil {
			return -1, sysErr("setns(CLONE_NEWNS)", err)
		}
		if try >= 4*len(cpus) {
			return -1, fmt.Errorf("every new mount namespace got an id below this one's (%d): cannot pin it", base)
		}
		var one unix.CPUSet
		one.Set(cpus[try%len(cpus)])
		_ = unix.SchedSetaffinity(0, &one)
	}
}

// pin bind-mounts the namespace's nsfs file on PIN/mntns-<ID>, a new file.
func (a *applier) pin(s Step) error {
	name := PinName(s.NS)
	fd, err := unix.Openat(a.pinDir, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return sysErr("openat(O_CREAT|O_EXCL)", fmt.Errorf("%s: %w", filepath.Join(a.opt.PinDir, name), err))
	}
	defer unix.Close(fd)
	a.pins = append(a.pins, name)
	err = a.sys("mount(MS_BIND)", func() error {
		return unix.Mount(procFd(a.nsFds[s.NS]), procFd(fd), "", unix.MS_BIND, "")
	})
	return err
}
