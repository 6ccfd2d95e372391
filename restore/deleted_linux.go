package restore

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/mntv2/mntv2/internal/beneath"
	"golang.org/x/sys/unix"
)

// A mount whose root was deleted is restored as CRIU does: the root is
// made again in the mount's source, bound, and removed once the sharing
// is done, so that the mount shows "//deleted" again. Several mounts may
// share one deleted root (CRIU 4.2 fails on the second): it is made once.

// remade is a deleted root made again, and the directories made for it.
type remade struct {
	path  string
	dirfd int      // the source mount's root, kept open
	made  []string // paths made, parents first; the last is the root itself
	dirs  []bool   // whether each is a directory
	host  bool     // path is a host path; made is relative to its directory
	done  bool
}

// makeDeleted makes the deleted root s.Path again inside s.From: a
// directory, or an empty file when the mountpoint is not a directory.
func (a *applier) makeDeleted(s Step) error {
	if d := a.remadeFor(s); d != nil {
		return nil // made for another mount of the same root
	}
	dir, err := a.deletedKind(s)
	if err != nil {
		return err
	}
	var root int
	rel := s.Path
	if s.From == NoHandle {
		// A host path (an external mount): its directory is the host's,
		// resolved as CRIU resolves it; only the last component is made.
		dirPath, base := path.Split(s.Path)
		root, err = unix.Open(dirPath, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return sysErr("open", fmt.Errorf("the directory of the deleted root %s: %w", s.Path, err))
		}
		rel = base
	} else if root, err = beneath.Open(a.fds[s.From], ".", unix.O_PATH|unix.O_DIRECTORY, 0); err != nil {
		return sysErr("openat2", err)
	}
	d := &remade{path: s.Path, dirfd: root, host: s.From == NoHandle}
	a.deleted = append(a.deleted, d)
	parts := strings.Split(rel, "/")
	for i := range parts {
		p := strings.Join(parts[:i+1], "/")
		isDir := i < len(parts)-1 || dir
		parent, name := root, p
		if i > 0 {
			fd, err := beneath.Open(root, strings.Join(parts[:i], "/"), unix.O_PATH|unix.O_DIRECTORY, 0)
			if err != nil {
				return sysErr("openat2", fmt.Errorf("deleted root %s: %w", s.Path, err))
			}
			defer unix.Close(fd)
			parent, name = fd, parts[i]
		}
		made, err := beneath.Create(parent, name, isDir)
		if err != nil {
			return fmt.Errorf("deleted root %s: %w", s.Path, err)
		}
		if made {
			d.made, d.dirs = append(d.made, p), append(d.dirs, isDir)
		} else if i == len(parts)-1 {
			return fmt.Errorf("deleted root %s exists in its source: it is not deleted there", s.Path)
		}
	}
	return nil
}

// deletedKind says whether a deleted root is a directory: whatever its
// mountpoint is (criu/mount-v2.c detect_is_dir), a directory when that is
// not known.
func (a *applier) deletedKind(s Step) (bool, error) {
	if s.Parent == NoHandle {
		return true, nil
	}
	if err := a.waitCreated(a.fillFor(s.Parent)); err != nil {
		return false, err
	}
	fd, err := beneath.Open(a.fds[s.Parent], orDot(s.Target), unix.O_PATH, 0)
	if errors.Is(err, unix.ENOENT) {
		return true, nil
	}
	if err != nil {
		return false, sysErr("openat2", fmt.Errorf("mountpoint %s: %w", s.Target, err))
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, sysErr("fstat", err)
	}
	return st.Mode&unix.S_IFMT == unix.S_IFDIR, nil
}

// remadeFor is the deleted root made again for s (same path in the same
// source), or nil.
func (a *applier) remadeFor(s Step) *remade {
	for _, d := range a.deleted {
		if d.done || d.path != s.Path {
			continue
		}
		if s.From == NoHandle && d.host || s.From != NoHandle && !d.host && a.sameMount(d.dirfd, a.fds[s.From]) {
			return d
		}
	}
	return nil
}

// sameMount says whether two fds are on one mount.
func (a *applier) sameMount(x, y int) bool {
	var sx, sy unix.Statx_t
	return unix.Statx(x, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &sx) == nil &&
		unix.Statx(y, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &sy) == nil && sx.Mnt_id == sy.Mnt_id
}

// removeDeleted removes what makeDeleted made for s.Path in s.From.
func (a *applier) removeDeleted(s Step) error {
	if d := a.remadeFor(s); d != nil {
		return d.remove()
	}
	return fmt.Errorf("deleted root %s: not made by this restore", s.Path)
}

// remove deletes the root and the directories made for it, deepest first.
func (r *remade) remove() error {
	if r.done {
		return nil
	}
	r.done = true
	for i := len(r.made) - 1; i >= 0; i-- {
		dir, name := path.Split(r.made[i])
		parent := r.dirfd
		if dir != "" {
			fd, err := beneath.Open(r.dirfd, strings.TrimSuffix(dir, "/"), unix.O_PATH|unix.O_DIRECTORY, 0)
			if err != nil {
				return sysErr("openat2", err)
			}
			defer unix.Close(fd)
			parent = fd
		}
		flags := 0
		if r.dirs[i] {
			flags = unix.AT_REMOVEDIR
		}
		if err := unix.Unlinkat(parent, name, flags); err != nil {
			return sysErr("unlinkat", fmt.Errorf("%s: %w", r.made[i], err))
		}
	}
	return nil
}

func (r *remade) close() {
	if r.dirfd >= 0 {
		unix.Close(r.dirfd)
		r.dirfd = -1
	}
}
