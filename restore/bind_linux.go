package restore

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/mntv2/mntv2/internal/beneath"
	"golang.org/x/sys/unix"
)

// bind clones the mount at a path inside another handle's mount. The path
// is resolved below that mount's root without symlinks (the content may
// come from the images) before open_tree clones it.
func (a *applier) bind(s Step) error {
	if s.Path != "" {
		if err := a.waitCreated(a.fillFor(s.From)); err != nil {
			return err
		}
	}
	if s.Deleted {
		if err := a.makeDeleted(s); err != nil {
			return err
		}
	}
	from := a.fds[s.From]
	if info := a.plan.Handles[s.From]; s.Path != "" && !strings.Contains(s.Path, "/") &&
		info.Mount == 0 && !info.Root && !info.Live && !info.Helper {
		// A subdirectory of a new superblock's own detached mount: one
		// component, looked up inside it without following a final
		// symlink, needs no separate checked open.
		fd, err := a.sysFd("open_tree", func() (int, error) {
			return unix.OpenTree(from, s.Path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW)
		})
		if errors.Is(err, unix.ENOENT) && a.socketRoot(s) {
			fd, err = a.sysFd("open_tree", func() (int, error) {
				return unix.OpenTree(from, s.Path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW)
			})
		}
		if err != nil {
			return fmt.Errorf("%s inside %s: %w", s.Path, info.What, err)
		}
		a.fds[s.Handle] = fd
		return nil
	}
	if s.Path != "" {
		fd, err := beneath.Open(from, s.Path, unix.O_PATH, 0)
		if errors.Is(err, unix.EXDEV) && a.plan.Handles[s.From].Live {
			// The path is covered by a mount in the restored tree: it is
			// found in a clone of the source mount alone, which has no
			// mounts on it (and must stay open until it is cloned from:
			// closing it dissolves it).
			var bare int
			bare, fd, err = a.inBareClone(from, s.Path)
			if bare >= 0 {
				defer unix.Close(bare)
			}
		}
		if errors.Is(err, unix.ENOENT) && a.socketRoot(s) {
			fd, err = beneath.Open(from, s.Path, unix.O_PATH, 0)
		}
		if err != nil {
			return sysErr("openat2", fmt.Errorf("%s inside %s: %w", s.Path, a.plan.Handles[s.From].What, err))
		}
		defer unix.Close(fd)
		from = fd
	}
	fd, err := a.sysFd("open_tree", func() (int, error) {
		return unix.OpenTree(from, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	})
	if err != nil {
		return err
	}
	a.fds[s.Handle] = fd
	if s.Path == "" {
		// The same root as what it is cloned from: a thousand peer
		// binds need one fstat (isDir), not one each.
		a.kind[s.Handle] = a.kind[s.From]
	}
	return nil
}

// socketRoot makes, for a bind whose root is missing from a tmpfs mntv2
// filled from its archive, a socket inode there and says so: GNU tar
// archives every kind of file but sockets ("socket ignored"), so that is
// what the root was (a docker.sock-style bind of a listening socket). It
// is the socket inode as a listener that exits leaves it: the listener is
// the restored tasks', made by whoever restores them. In the hook, CRIU
// restores the listener first and mntv2 binds the real socket.
func (a *applier) socketRoot(s Step) bool {
	fl := a.fillFor(s.From)
	if fl == nil || a.waitCreated(fl) != nil {
		return false
	}
	dir, name := path.Split(s.Path)
	parent := a.fds[s.From]
	if dir = strings.TrimSuffix(dir, "/"); dir != "" {
		fd, err := beneath.Open(parent, dir, unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			return false
		}
		defer unix.Close(fd)
		parent = fd
	}
	if unix.Mknodat(parent, name, unix.S_IFSOCK|0o755, 0) != nil {
		return false
	}
	a.opt.Log.Warn("restore: the root of a bind is not in its tmpfs content, so it was a socket (tar leaves sockets out): made a socket inode for it (its listener is the restored tasks')",
		"mount", a.plan.Handles[s.Handle].What, "root", s.Path)
	return true
}

// inBareClone opens path inside a clone of the mount from, without the
// mounts on it; it returns the clone too, which the caller closes when
// done with the path.
func (a *applier) inBareClone(from int, path string) (clone, fd int, err error) {
	clone, err = a.sysFd("open_tree", func() (int, error) {
		return unix.OpenTree(from, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	})
	if err != nil {
		return -1, -1, err
	}
	fd, err = beneath.Open(clone, path, unix.O_PATH, 0)
	return clone, fd, err
}
