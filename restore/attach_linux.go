package restore

import (
	"errors"
	"path"
	"strings"

	"github.com/mntv2/mntv2/internal/beneath"
	"golang.org/x/sys/unix"
)

// attach moves a detached mount onto its mountpoint, resolved from the
// parent mount's fd; missing mountpoints are created.
func (a *applier) attach(s Step) error {
	err := a.attachOnce(s)
	if !errors.Is(err, unix.EROFS) || !a.plan.Handles[s.Parent].Live {
		return err
	}
	// A restored parent mounted read-only (a mount CRIU made, say under
	// ProtectSystem=strict): its mountpoint is made through a moment of
	// rw on that mount alone, as CRIU makes ghost files
	// (criu/mount.c try_remount_writable). A read-only superblock stays
	// EROFS.
	pfd := a.fds[s.Parent]
	if rerr := a.sys("mount_setattr", func() error {
		return unix.MountSetattr(pfd, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_clr: unix.MOUNT_ATTR_RDONLY})
	}); rerr != nil {
		return err
	}
	err = a.attachOnce(s)
	if rerr := a.sys("mount_setattr", func() error {
		return unix.MountSetattr(pfd, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY})
	}); err == nil {
		err = rerr
	}
	return err
}

// attachOnce is attach's work.
func (a *applier) attachOnce(s Step) error {
	src := a.fds[s.Handle]
	target := a.fds[s.Parent]
	if s.Path != "" {
		isDir, err := a.isDir(s.Handle)
		if err != nil {
			return err
		}
		// The mountpoint may come with the content: wait until it is
		// premade, or until every entry exists (see fill).
		fl := a.fillFor(s.Parent)
		premade := fl != nil && isDir && a.rootIn[s.Parent] == "" && fl.isPremade(s.Path)
		if premade {
			err = a.waitPremade(fl, s.Path)
		} else {
			err = a.waitCreated(fl)
		}
		if err != nil {
			return err
		}
		var record func(created)
		if s.Persistent {
			record = func(c created) { a.created = append(a.created, c) }
		}
		// The fast paths: a name in a mount this restore made (a file
		// mount too), or a directory mount below a directory of its
		// parent or on a persistent filesystem.
		if byName := !s.Persistent && !strings.Contains(s.Path, "/"); byName || isDir {
			dirfd, name, exists := target, s.Path, premade
			if byName {
				exists = exists || isDir && fl != nil && fl.x.hasDir(path.Join(a.rootIn[s.Parent], s.Path))
			} else if dirfd, name, err = a.dirOf(s, record); err != nil {
				return err
			}
			if done, err := a.attachNamed(s, dirfd, name, isDir, exists, record); done || err != nil {
				if err == nil {
					a.attachedAt(s)
				}
				return err
			}
		}
		fd, err := beneath.Mountpoint(target, s.Path, isDir, record)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		target = fd
	}
	if err := a.sys("move_mount", func() error {
		return unix.MoveMount(src, "", target, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
	}); err != nil {
		return err
	}
	a.attachedAt(s)
	return nil
}

// attachedAt notes a mount attached at s.Path under s.Parent: a persistent
// one for rollback, and the end of the cached directory (see dirOf)
// if the mount covers it.
func (a *applier) attachedAt(s Step) {
	if s.Persistent {
		a.attached[s.NS] = append(a.attached[s.NS], s.Handle)
	}
	if c := &a.dirCache; c.fd >= 0 && c.parent == s.Parent && (c.dir == s.Path || strings.HasPrefix(c.dir, s.Path+"/")) {
		unix.Close(c.fd)
		c.fd = -1
	}
}

// dirOf resolves the directory of s's mountpoint in its parent (a/b/c:
// a/b; "" is the parent's root) with the checked lookup, and keeps it for
// the next attach in it (siblings come one after another). It returns that
// directory and the mountpoint's last component.
func (a *applier) dirOf(s Step, record func(created)) (dirfd int, name string, err error) {
	dir, base := path.Split(s.Path)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		return a.fds[s.Parent], base, nil
	}
	c := &a.dirCache
	if c.fd < 0 || c.parent != s.Parent || c.dir != dir {
		if c.fd >= 0 {
			unix.Close(c.fd)
			c.fd = -1
		}
		fd, err := beneath.Mountpoint(a.fds[s.Parent], dir, true, record)
		if err != nil {
			return -1, "", err
		}
		c.fd, c.parent, c.dir = fd, s.Parent, dir
	}
	return c.fd, base, nil
}

// attachNamed is attach's fast path: it moves s's mount onto name in dirfd,
// resolved by move_mount without following a symlink. A mountpoint that
// exists (the tmpfs content has it, or a persistent filesystem most likely
// does) is moved onto first; a missing one is made, recorded when record
// is set, and moved onto. An existing entry is taken only as a directory
// (a directory mount cannot land on a symlink or a file: see notMountable);
// otherwise it reports not done, and attach's checked path decides and
// says why.
func (a *applier) attachNamed(s Step, dirfd int, name string, isDir, exists bool, record func(created)) (done bool, err error) {
	moveOnce := func() error { return unix.MoveMount(a.fds[s.Handle], "", dirfd, name, unix.MOVE_MOUNT_F_EMPTY_PATH) }
	move := func() error { return a.sys("move_mount", moveOnce) }
	if exists || s.Persistent {
		err := move()
		switch {
		case err == nil:
			return true, nil
		case notMountable(err):
			return false, nil
		case !s.Persistent || !errors.Is(err, unix.ENOENT):
			return true, err
		}
		// Missing on a persistent filesystem: the retry after the mkdir
		// is not counted, so that an attach counts one move either way
		// (fault injection relies on the count).
		move = func() error { return sysErr("move_mount", moveOnce()) }
	}
	made, err := beneath.Create(dirfd, name, isDir)
	if err != nil {
		return true, err
	}
	if made {
		beneath.NoteCreated(record, dirfd, name, isDir)
	} else if !isDir {
		return false, nil
	}
	if err := move(); made || !notMountable(err) {
		return true, err
	}
	return false, nil
}

// isDir says whether a handle's mount root is a directory.
func (a *applier) isDir(h Handle) (bool, error) {
	if a.kind[h] == kindUnknown {
		var st unix.Stat_t
		if err := unix.Fstat(a.fds[h], &st); err != nil {
			return false, sysErr("fstat", err)
		}
		a.kind[h] = kindOther
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			a.kind[h] = kindDir
		}
	}
	return a.kind[h] == kindDir, nil
}

// notMountable says whether a move by name failed on what is at the name:
// ENOTDIR for a file, EINVAL for a symlink (move_mount does not follow
// it). The checked lookup then says what is there.
func notMountable(err error) bool {
	return errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.EINVAL)
}
