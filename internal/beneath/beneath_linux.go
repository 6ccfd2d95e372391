// Package beneath resolves paths in trees mntv2 restores, which their
// containers control: openat2 never above the starting directory, never
// through a symlink, never into another mount; and creates what is
// missing.
package beneath

import (
	"errors"
	"fmt"
	"strings"

	"github.com/mntv2/mntv2/internal/sysx"
	"golang.org/x/sys/unix"
)

// Every path mntv2 resolves in a tree it restores goes through openat2 with
// these: never above the starting directory, never through a symlink (a
// container controls its root's symlinks: runc CVE-2021-30465, 2024-21626),
// never into another mount.
const resolveInside = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_MAGICLINKS

// Open opens name (one component or a relative path) below dirfd
// (openat2 asks for a retry when a rename raced it: sysx.Again).
func Open(dirfd int, name string, flags int, mode uint32) (int, error) {
	fd, err := sysx.Again(func() (int, error) {
		return unix.Openat2(dirfd, name, &unix.OpenHow{
			Flags: uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW), Mode: uint64(mode), Resolve: resolveInside,
		})
	})
	if errors.Is(err, sysx.ErrRaced) {
		return -1, fmt.Errorf("%s: %w", name, err)
	}
	return fd, err
}

// Created is an entry mntv2 made on a filesystem that outlives the restore.
type Created struct {
	Dirfd int // O_PATH fd of the directory holding it
	Name  string
	Dir   bool
}

// Mountpoint resolves rel below dirfd one component at a time and
// returns an O_PATH fd of it. Missing components are created: directories,
// and the last one as a directory or, for a file mount, an empty file. Each
// creation is passed to record (which then owns the dirfd) when it is not
// nil. A symlink anywhere, or a last component of the wrong kind, is an
// error.
func Mountpoint(dirfd int, rel string, wantDir bool, record func(Created)) (int, error) {
	cur, err := Open(dirfd, ".", unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return -1, sysx.Wrap("openat2", err)
	}
	parts := strings.Split(rel, "/")
	for i, name := range parts {
		last := i == len(parts)-1
		dir := !last || wantDir
		fd, err := Open(cur, name, unix.O_PATH, 0)
		if errors.Is(err, unix.ENOENT) {
			var made bool
			made, err = Create(cur, name, dir)
			if err == nil {
				if made {
					NoteCreated(record, cur, name, dir)
				}
				fd, err = Open(cur, name, unix.O_PATH, 0)
			}
		}
		unix.Close(cur)
		if err != nil {
			return -1, sysx.Wrap("openat2", fmt.Errorf("%s: %w", strings.Join(parts[:i+1], "/"), err))
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return -1, sysx.Wrap("fstat", err)
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		switch {
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			err = fmt.Errorf("%s is a symlink: mntv2 never follows symlinks in a restored tree", strings.Join(parts[:i+1], "/"))
		case dir && !isDir:
			err = fmt.Errorf("%s is not a directory", strings.Join(parts[:i+1], "/"))
		case !dir && isDir:
			err = fmt.Errorf("%s is a directory, but the mount is of a file", strings.Join(parts[:i+1], "/"))
		}
		if err != nil {
			unix.Close(fd)
			return -1, sysx.Wrap("openat2", err)
		}
		cur = fd
	}
	return cur, nil
}

// Create makes name below dirfd, a directory or an empty file, and says
// whether it did; false when something is there already.
func Create(dirfd int, name string, dir bool) (bool, error) {
	if dir {
		err := unix.Mkdirat(dirfd, name, 0o755)
		if err == unix.EEXIST {
			return false, nil
		}
		return err == nil, sysx.Wrap("mkdirat", err)
	}
	fd, err := Open(dirfd, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o644)
	if err == unix.EEXIST {
		return false, nil
	}
	if err != nil {
		return false, sysx.Wrap("openat2(O_CREAT)", err)
	}
	return true, unix.Close(fd)
}

// NoteCreated passes an entry made below dirfd to record, if not nil,
// with a duplicate of dirfd that record then owns.
func NoteCreated(record func(Created), dirfd int, name string, dir bool) {
	if record == nil {
		return
	}
	if dup, err := unix.FcntlInt(uintptr(dirfd), unix.F_DUPFD_CLOEXEC, 0); err == nil {
		record(Created{Dirfd: dup, Name: name, Dir: dir})
	}
}
