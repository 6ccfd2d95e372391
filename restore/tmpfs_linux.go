package restore

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"github.com/mntv2/mntv2/images"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/mntv2/mntv2/internal/beneath"
	"golang.org/x/sys/unix"
)

// The content of a tmpfs comes from tmpfs-dev-<dev>.tar.gz.img, a gzipped
// tar CRIU makes with `tar --directory /proc/self/fd/N .`. The archive comes
// with the images, so it is hostile until proven otherwise: every entry is
// created below the new tmpfs's root fd with openat2 RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS (a symlink in the archive is created, never followed),
// hard links must point inside, and the bytes written are capped.

// maxTmpfsEntries caps the entries of one archive.
const maxTmpfsEntries = 1 << 20

// maxDirTimes caps the bytes of directory names kept for setting their
// times last; beyond it a directory's times are set when it is made.
const maxDirTimes = 64 << 20

// errStopped ends an extraction whose restore is stopping.
var errStopped = errors.New("stopped")

// extractTmpfs unpacks a gzipped tar into the directory rootfd, writing at
// most limit bytes of file data.
func extractTmpfs(r io.Reader, rootfd int, limit int64) error {
	x := newExtraction(rootfd, limit)
	defer x.close()
	if err := x.create(r); err != nil {
		return err
	}
	return x.setDirTimes()
}

func newExtraction(rootfd int, limit int64) *extraction {
	return &extraction{rootfd: rootfd, budget: limit, limit: limit, dirfd: -1, mask: -1,
		uid: os.Geteuid(), gid: os.Getegid(), setgid: map[string]bool{}, dirs: map[string]bool{}}
}

// hasDir says whether name (relative to the root, "" for it) is a
// directory of the archive; false when unknown (over maxDirTimes).
// Only once create has returned.
func (x *extraction) hasDir(name string) bool { return name == "" || x.dirs[name] }

// create makes every entry of the archive with its owner and mode, and
// its times unless it is a directory (see setDirTimes).
func (x *extraction) create(r io.Reader) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("tmpfs archive: %w", err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	for n := 0; ; n++ {
		if x.stop.Load() {
			return errStopped
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("tmpfs archive, entry %d: %w", n, err)
		}
		if n >= maxTmpfsEntries {
			return fmt.Errorf("tmpfs archive: more than %d entries", maxTmpfsEntries)
		}
		name, err := entryName(hdr.Name)
		if err != nil {
			return fmt.Errorf("tmpfs archive, entry %q: %w", hdr.Name, err)
		}
		if x.owner != nil {
			// Archived inside a user namespace: its ids.
			hdr.Uid, hdr.Gid = images.ToParent(x.owner.UID, hdr.Uid), images.ToParent(x.owner.GID, hdr.Gid)
		}
		if x.idmap != nil {
			// Archived through an idmapped mount: the owners it shows.
			hdr.Uid, hdr.Gid = unmapID(x.idmap.UID, hdr.Uid), unmapID(x.idmap.GID, hdr.Gid)
		}
		if err := x.entry(tr, hdr, name); err != nil {
			return fmt.Errorf("tmpfs archive, entry %q: %w", hdr.Name, err)
		}
	}
}

// entryName cleans an archive path to one relative to the root ("." for the
// root itself); absolute paths and ".." are refused.
func entryName(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return "", errors.New("absolute path")
	}
	if strings.ContainsRune(name, 0) {
		return "", errors.New("NUL in path")
	}
	if len(name) >= unix.PathMax {
		return "", fmt.Errorf("path of %d bytes: longer than PATH_MAX", len(name))
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", errors.New(`".." in path`)
		}
	}
	return path.Clean(name), nil
}

// extraction is the state of one archive's extraction.
type extraction struct {
	rootfd  int
	budget  int64 // file bytes left
	limit   int64 // the budget at the start
	logical int64 // the sizes of sparse files so far, holes included
	walked  int   // path components resolved so far
	dir     string
	dirfd   int // the directory of the last entry, kept for the next
	mask    int // the umask, -1 until read

	// A new entry is owned by uid and gid, unless its directory is
	// setgid: then it takes the directory's group (and a directory the
	// setgid bit). setgid lists the directories made so ("" for the root).
	uid, gid int
	setgid   map[string]bool

	// Directories get their times last, when nothing more is made in
	// them (which would change their mtime), as tar does. dirs has the
	// same names, for hasDir.
	dirTimes []dirTime
	kept     int // bytes of names in dirTimes
	dirs     map[string]bool

	stop atomic.Bool // set to end the extraction early

	// idmap, when set, is the maps of the idmapped mount the archive was
	// made through: its owners are as that mount showed them, and the
	// filesystem gets them mapped back.
	idmap *images.IDMaps
	// owner, when set, is the maps of the user namespace the archive was
	// made in: its owners are ids of that namespace.
	owner *images.IDMaps

	// Directories of the root made before the archive is read (premake),
	// until their entry comes, and the mode and group they were made with.
	premade     map[string]bool
	premadeMode uint32
	premadeGID  int
}

// premake makes the directories names in the root before anything else,
// for mounts waiting to be attached on them (see fill), and calls made
// with the count made so far. Their entries, when the archive has them,
// give them the archive's owner, mode and times; if it has something else
// under one of these names, the extraction fails (EEXIST) as the attach
// would have (a directory mount needs a directory).
func (x *extraction) premake(names []string, made func(n int)) error {
	var st unix.Stat_t
	if err := unix.Fstat(x.rootfd, &st); err != nil {
		return sysErr("fstat", err)
	}
	// What mkdir gives: the umask applies; a setgid root passes on its
	// group and the setgid bit.
	x.premadeMode, x.premadeGID = 0o755&^x.umask(), x.gid
	if st.Mode&unix.S_ISGID != 0 {
		x.premadeMode, x.premadeGID = x.premadeMode|unix.S_ISGID, int(st.Gid)
	}
	x.premade = make(map[string]bool, len(names))
	for i, n := range names {
		if x.stop.Load() {
			return errStopped
		}
		if err := unix.Mkdirat(x.rootfd, n, 0o755); err != nil {
			return fmt.Errorf("mountpoint %q: %w", n, sysErr("mkdirat", err))
		}
		x.premade[n] = true
		made(i + 1)
	}
	return nil
}

type dirTime struct {
	dir, base string
	ts        []unix.Timespec
}

// setDirTimes gives the directories their archived times, once every
// entry exists.
func (x *extraction) setDirTimes() error {
	for _, d := range x.dirTimes {
		if x.stop.Load() {
			return errStopped
		}
		name := path.Join(d.dir, d.base)
		parent, err := x.parent(d.dir)
		if err != nil {
			return fmt.Errorf("tmpfs archive, entry %q: %w", name, err)
		}
		if err := unix.UtimesNanoAt(parent, d.base, d.ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("tmpfs archive, entry %q: %w", name, sysErr("utimensat", err))
		}
	}
	return nil
}

// maxWalked bounds the path components resolved for one archive: a
// million entries each at the bottom of a different deep tree would
// otherwise cost billions of lookups.
const maxWalked = 1 << 23

func (x *extraction) close() {
	if x.dirfd >= 0 {
		unix.Close(x.dirfd)
		x.dirfd = -1
	}
}

// parent opens (creating it if needed) the directory dir of an entry; the
// last one is kept, since archives list a directory's entries together.
func (x *extraction) parent(dir string) (int, error) {
	if dir == "" {
		return x.rootfd, nil
	}
	if x.dirfd >= 0 && x.dir == dir {
		return x.dirfd, nil
	}
	x.walked += strings.Count(dir, "/") + 1
	if x.walked > maxWalked {
		return -1, fmt.Errorf("more than %d path components in all: refusing the archive", maxWalked)
	}
	fd, err := beneath.Mountpoint(x.rootfd, dir, true, nil)
	if err != nil {
		return -1, err
	}
	x.close()
	x.dir, x.dirfd = dir, fd
	return fd, nil
}

func (x *extraction) entry(tr *tar.Reader, hdr *tar.Header, name string) error {
	rootfd, budget := x.rootfd, &x.budget
	sparse := isSparse(hdr)
	if sparse {
		// CRIU tars with --sparse: GNU tar writes a file with holes as
		// an old GNU sparse entry ('S'), or in PAX as GNU.sparse.*
		// records; Go's reader gives its data with the holes as zeros.
		hdr.Typeflag = tar.TypeReg
		if x.logical += hdr.Size; x.logical > maxLogical(x.limit) {
			return fmt.Errorf("sparse files of %d bytes in all: more than mntv2 reads through (%d)", x.logical, maxLogical(x.limit))
		}
	}
	if hdr.Typeflag != tar.TypeReg && hdr.Size != 0 {
		// Only files carry data; skipping a directory's claimed terabytes
		// would decompress them all (a gzip bomb).
		return fmt.Errorf("a %q entry with %d bytes of data", hdr.Typeflag, hdr.Size)
	}
	mode := uint32(hdr.Mode) & 0o7777
	if name == "." {
		if hdr.Typeflag != tar.TypeDir {
			return errors.New("the root entry is not a directory")
		}
		x.setgid[""] = mode&unix.S_ISGID != 0
		return setAttrs(rootfd, "", hdr, mode, false, false) // the root keeps its times: it is a mount root
	}
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	parent, err := x.parent(dir)
	if err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeDir {
		x.setgid[name] = mode&unix.S_ISGID != 0
	}
	// An entry made here with its final permissions (the umask took
	// nothing and there are no setuid, setgid or sticky bits) needs no
	// chmod, and one made with its final owner no chown: it is in a new
	// tmpfs nobody else can reach yet.
	perm, made := mode&0o777, false
	plain := !x.setgid[dir]
	exact := mode == perm && perm&x.umask() == 0 && plain
	owned := hdr.Uid == x.uid && hdr.Gid == x.gid && plain
	switch hdr.Typeflag {
	case tar.TypeDir:
		if dir == "" && x.premade[base] {
			// Made by premake, with attributes known.
			delete(x.premade, base)
			made, exact, owned = true, mode == x.premadeMode, hdr.Uid == x.uid && hdr.Gid == x.premadeGID
			break
		}
		err := unix.Mkdirat(parent, base, perm)
		made = err == nil
		if err == unix.EEXIST {
			fd, err := beneath.Open(parent, base, unix.O_PATH|unix.O_DIRECTORY, 0)
			if err != nil {
				return fmt.Errorf("%s exists and is not a directory (%w)", base, err)
			}
			unix.Close(fd)
		} else if err != nil {
			return sysErr("mkdirat", err)
		}
	case tar.TypeReg:
		if hdr.Size > *budget && !sparse {
			return fmt.Errorf("%d bytes exceed what is left of the tmpfs size limit (%d bytes)", hdr.Size, *budget)
		}
		fd, err := beneath.Open(parent, base, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, perm)
		if err != nil {
			return sysErr("openat2(O_CREAT)", err)
		}
		made = true
		var n int64
		if sparse {
			n, err = copySparse(fd, tr, hdr.Size, *budget)
		} else {
			n, err = io.Copy(&fdWriter{fd}, io.LimitReader(tr, *budget+1))
		}
		unix.Close(fd)
		*budget -= n
		if err != nil {
			return err
		}
		if *budget < 0 {
			return errors.New("file data exceeds the tmpfs size limit")
		}
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, parent, base); err != nil {
			return sysErr("symlinkat", err)
		}
	case tar.TypeLink:
		target, err := entryName(hdr.Linkname)
		if err != nil || target == "." {
			return fmt.Errorf("hard link to %q: outside the archive", hdr.Linkname)
		}
		fd, err := beneath.Open(rootfd, target, unix.O_PATH, 0)
		if err != nil {
			return sysErr("openat2", fmt.Errorf("hard link target %q: %w", hdr.Linkname, err))
		}
		err = unix.Linkat(fd, "", parent, base, unix.AT_EMPTY_PATH)
		unix.Close(fd)
		return sysErr("linkat", err) // a link shares its target's attributes
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknodat(parent, base, kind|perm, int(dev)); err != nil {
			return sysErr("mknodat", err)
		}
		made = true
	default:
		return fmt.Errorf("unsupported entry type %q", hdr.Typeflag)
	}
	if err := setAttrs(parent, base, hdr, mode, made && exact, made && owned); err != nil {
		return err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(hdr.AccessTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	if hdr.AccessTime.IsZero() {
		ts[0] = ts[1]
	}
	if hdr.Typeflag == tar.TypeDir && x.kept+len(name) <= maxDirTimes {
		x.kept += len(name)
		x.dirTimes = append(x.dirTimes, dirTime{dir: dir, base: base, ts: ts})
		x.dirs[name] = true
		return nil
	}
	return sysErr("utimensat", unix.UtimesNanoAt(parent, base, ts, unix.AT_SYMLINK_NOFOLLOW))
}

// umask is this process's umask, read once (from /proc: umask(2) would
// change it for every thread while read).
func (x *extraction) umask() uint32 {
	if x.mask < 0 {
		x.mask = 0o777 // unknown: always chmod
		if b, err := os.ReadFile("/proc/self/status"); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(l, "Umask:"); ok {
					if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
						x.mask = int(m)
					}
				}
			}
		}
	}
	return uint32(x.mask)
}

// setAttrs gives an entry its owner and mode, never through a symlink,
// skipping what it was made with already. The mode comes last:
// chown clears setuid bits.
func setAttrs(dirfd int, name string, hdr *tar.Header, mode uint32, modeSet, ownerSet bool) error {
	flags := unix.AT_SYMLINK_NOFOLLOW
	if name == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	if !ownerSet {
		if err := unix.Fchownat(dirfd, name, hdr.Uid, hdr.Gid, flags); err != nil {
			return sysErr("fchownat", err)
		}
	}
	switch {
	case modeSet || hdr.Typeflag == tar.TypeSymlink:
		// made with its mode already; a symlink has none
	case name != "":
		// The entry was just made (or checked to be a directory) by this
		// extraction, in a new tmpfs that is not attached anywhere: it is
		// no symlink, and nothing else can swap it.
		if err := unix.Fchmodat(dirfd, name, mode, 0); err != nil {
			return sysErr("fchmodat", err)
		}
	default:
		fd, err := beneath.Open(dirfd, orDot(name), unix.O_PATH, 0)
		if err != nil {
			return sysErr("openat2", err)
		}
		// fchmodat cannot take AT_SYMLINK_NOFOLLOW everywhere: chmod the
		// O_PATH fd's magic link instead, which names this very inode.
		err = unix.Fchmodat(unix.AT_FDCWD, "/proc/thread-self/fd/"+strconv.Itoa(fd), mode, 0)
		unix.Close(fd)
		if err != nil {
			return sysErr("fchmodat", err)
		}
	}
	return nil
}

func orDot(name string) string {
	if name == "" {
		return "."
	}
	return name
}
