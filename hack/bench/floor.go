package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/mntv2/mntv2/restore"
	"golang.org/x/sys/unix"
)

// counts are the mount syscalls a plan makes, by kind.
type counts struct {
	newSB, bind, attach, setGroup, prop, setFlags, openLive int
}

func countSteps(p *restore.Plan) counts {
	var c counts
	for _, s := range p.Steps {
		switch s.Op {
		case restore.OpNewSuperblock:
			c.newSB++
		case restore.OpBind, restore.OpOpenExternal:
			c.bind++
		case restore.OpAttach:
			c.attach++
		case restore.OpSetGroup:
			c.setGroup++
		case restore.OpMakeShared, restore.OpMakeSlave, restore.OpMakeUnbindable:
			c.prop++
		case restore.OpSetFlags:
			c.setFlags++
		case restore.OpOpenLive:
			c.openLive++
		}
	}
	return c
}

// inFreshNamespace runs fn on a thread of its own in a new private mount
// namespace; the thread ends with it.
func inFreshNamespace(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS); err != nil {
			errc <- err
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// inTmpfsBox runs fn, as inFreshNamespace does, on a new temporary
// directory with a tmpfs of its own mounted there (removed after).
func inTmpfsBox(prefix string, fn func(box string) error) error {
	return inFreshNamespace(func() error {
		box, err := os.MkdirTemp("", prefix)
		if err != nil {
			return err
		}
		defer os.Remove(box)
		if err := unix.Mount("floor", box, "tmpfs", 0, ""); err != nil {
			return err
		}
		defer unix.Unmount(box, unix.MNT_DETACH)
		return fn(box)
	})
}

func procFd(fd int) string { return "/proc/thread-self/fd/" + strconv.Itoa(fd) }

// fullFloor does, in a minimal loop, what a full restore's syscalls do:
// new tmpfs superblocks, clones of them, mkdir and move_mount of each onto
// a tmpfs, MOVE_MOUNT_SET_GROUP and propagation changes, mount_setattr.
func fullFloor(c counts, dir string, run int) (time.Duration, error) {
	var el time.Duration
	err := inFreshNamespace(func() error {
		box := filepath.Join(dir, fmt.Sprintf("floor%d", run))
		if err := os.Mkdir(box, 0o755); err != nil {
			return err
		}
		if err := unix.Mount("floor", box, "tmpfs", 0, ""); err != nil {
			return err
		}
		defer unix.Unmount(box, unix.MNT_DETACH)
		boxfd, err := unix.Open(box, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(boxfd)
		var fds []int
		defer func() {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}()
		start := time.Now()
		var srcs []int
		for i := 0; i < max(c.newSB, 1); i++ {
			fs, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
			if err != nil {
				return err
			}
			if err := unix.FsconfigCreate(fs); err != nil {
				return err
			}
			m, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, 0)
			unix.Close(fs)
			if err != nil {
				return err
			}
			srcs = append(srcs, m)
			fds = append(fds, m)
		}
		var binds []int
		for i := 0; i < c.bind; i++ {
			fd, err := unix.OpenTree(srcs[i%len(srcs)], "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
			if err != nil {
				return err
			}
			binds = append(binds, fd)
			fds = append(fds, fd)
		}
		for i := 0; i < c.attach && i < len(binds); i++ {
			name := "m" + strconv.Itoa(i)
			if err := unix.Mkdirat(boxfd, name, 0o755); err != nil {
				return err
			}
			if err := unix.MoveMount(binds[i], "", boxfd, name, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
				return err
			}
		}
		sharing(binds, c.setGroup, c.prop)
		attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID}
		for i := 0; i < c.setFlags && len(binds) > 0; i++ {
			_ = unix.MountSetattr(binds[i%len(binds)], "", unix.AT_EMPTY_PATH, attr)
		}
		// Closing is part of the work, as for mntv2.
		for _, fd := range fds {
			unix.Close(fd)
		}
		fds = nil
		el = time.Since(start)
		return nil
	})
	return el, err
}

// sharing makes the first mount shared, copies its group onto the next
// ones, and spends the remaining propagation calls on them.
func sharing(ms []int, setGroup, prop int) {
	if len(ms) == 0 {
		return
	}
	_ = unix.Mount("", procFd(ms[0]), "", unix.MS_SHARED, "")
	for i := 0; i < setGroup; i++ {
		_ = unix.MoveMount(ms[0], "", ms[1+i%max(len(ms)-1, 1)], "",
			unix.MOVE_MOUNT_SET_GROUP|unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
	}
	for i := 1; i < prop; i++ {
		_ = unix.Mount("", procFd(ms[i%len(ms)]), "", unix.MS_SHARED, "")
	}
}

// hookFloor does what post-restore's syscalls do, on a private tree of its
// own with as many mounts: open_tree of each by path (no clone), the extra
// move_mounts of peeling, set-group and propagation changes.
func hookFloor(c counts, extraMoves int) (time.Duration, error) {
	var el time.Duration
	err := inTmpfsBox("mntv2-hookfloor-", func(box string) error {
		n := max(c.openLive, 1)
		for i := 0; i < n; i++ {
			p := filepath.Join(box, "m"+strconv.Itoa(i))
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
			if err := unix.Mount("sb", p, "tmpfs", 0, ""); err != nil {
				return err
			}
		}
		if err := os.Mkdir(filepath.Join(box, "park"), 0o755); err != nil {
			return err
		}
		start := time.Now()
		var fds []int
		for i := 0; i < c.openLive; i++ {
			fd, err := unix.OpenTree(unix.AT_FDCWD, filepath.Join(box, "m"+strconv.Itoa(i)), unix.OPEN_TREE_CLOEXEC)
			if err != nil {
				return err
			}
			fds = append(fds, fd)
		}
		park := filepath.Join(box, "park")
		for i := 0; i+1 < extraMoves && len(fds) > 0; i += 2 {
			fd := fds[(i/2)%len(fds)]
			orig := filepath.Join(box, "m"+strconv.Itoa((i/2)%len(fds)))
			if err := unix.MoveMount(fd, "", unix.AT_FDCWD, park, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
				return err
			}
			if err := unix.MoveMount(fd, "", unix.AT_FDCWD, orig, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
				return err
			}
		}
		sharing(fds, c.setGroup, c.prop)
		for _, fd := range fds {
			unix.Close(fd)
		}
		el = time.Since(start)
		return nil
	})
	return el, err
}
