package dump

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"golang.org/x/sys/unix"
)

// writeTmpfsContent writes tmpfs-dev-<dev>.tar.gz.img for each tmpfs, as
// CRIU does: the content of the superblock, read through private clones of
// its mounts (a clone has no submounts, so what mounts hide is included).
// When no mount shows the superblock's root, the archive holds what the
// mounts show, at their roots' paths. view, when set, is the maps of the
// root task's user namespace: owners are written as it shows them.
func writeTmpfsContent(f *forest.Forest, nsPid map[uint32]int, d *images.Dir, view *images.IDMaps) (int, error) {
	bySB := map[uint32][]*forest.Mount{}
	var devs []uint32
	for _, ns := range f.Namespaces {
		_ = ns.Walk(func(m *forest.Mount) error {
			if m.FSType == "tmpfs" && !m.IsRoot() {
				if bySB[m.Dev] == nil {
					devs = append(devs, m.Dev)
				}
				bySB[m.Dev] = append(bySB[m.Dev], m)
			}
			return nil
		})
	}
	for _, dev := range devs {
		mounts := bySB[dev]
		slices.SortStableFunc(mounts, func(a, b *forest.Mount) int { return len(a.Root) - len(b.Root) })
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		tw := tar.NewWriter(zw)
		var done []string
		for _, m := range mounts {
			if slices.ContainsFunc(done, func(r string) bool { return r == "/" || m.Root == r || strings.HasPrefix(m.Root, r+"/") }) {
				continue
			}
			ok, err := archiveMount(m, nsPid[m.NS.ID], tw, view)
			if err != nil {
				return 0, fmt.Errorf("tmpfs content of %s (mount %d): %w", m.Mountpoint, m.ID, err)
			}
			if ok {
				done = append(done, m.Root)
			}
		}
		if err := tw.Close(); err != nil {
			return 0, err
		}
		if err := zw.Close(); err != nil {
			return 0, err
		}
		if err := d.WriteFile(images.TmpfsFile(dev), buf.Bytes(), 0o600); err != nil {
			return 0, err
		}
	}
	return len(devs), nil
}

// archiveMount adds the content of mount m to tw, read through a clone made
// inside its namespace. It reports false when m cannot be reached by its
// mountpoint (something covers it).
func archiveMount(m *forest.Mount, pid int, tw *tar.Writer, view *images.IDMaps) (bool, error) {
	nsfd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(nsfd)
	clone := -1
	err = forest.InNamespace(nsfd, func() error {
		// Work in a private copy of the namespace, where what covers m can
		// be unmounted without touching the container (rprivate first:
		// an unmount under a shared parent would propagate to it).
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("unshare(CLONE_NEWNS): %w", err)
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return fmt.Errorf("make the copy private: %w", err)
		}
		for _, c := range uncover(m) {
			for range c.count {
				if err := unix.Unmount(c.path, unix.MNT_DETACH); err != nil {
					return fmt.Errorf("uncover %s: umount %s: %w", m.Mountpoint, c.path, err)
				}
			}
		}
		fd, err := unix.Open(m.Mountpoint, unix.O_PATH|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err != nil {
			return nil
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || unix.Major(st.Dev) != m.Dev>>20 || unix.Minor(st.Dev) != m.Dev&(1<<20-1) {
			return nil // not the mount we want after all
		}
		clone, err = unix.OpenTree(fd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
		if err == unix.EINVAL && m.Unbindable {
			// An unbindable mount cannot be cloned: read it in place and
			// stop at its submounts.
			clone, err = unix.Dup(fd)
		}
		return err
	})
	if err != nil || clone < 0 {
		return false, err
	}
	defer unix.Close(clone)
	prefix := "."
	if m.Root != "/" {
		prefix = "." + m.Root
	}
	var stx unix.Statx_t
	if err := unix.Statx(clone, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx); err != nil {
		return false, err
	}
	w := &archiver{tw: tw, links: map[[2]uint64]string{}, mnt: stx.Mnt_id, view: view}
	var st unix.Stat_t
	if err := unix.Fstat(clone, &st); err != nil {
		return false, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		// A file mount: archive the file (other kinds carry no content).
		h := w.header(prefix, tar.TypeReg, &st)
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			h.Size = 0
			return true, tw.WriteHeader(h)
		}
		f, err := os.Open(fmt.Sprintf("/proc/thread-self/fd/%d", clone))
		if err != nil {
			return false, err
		}
		defer f.Close()
		h.Size = st.Size
		if err := tw.WriteHeader(h); err != nil {
			return false, err
		}
		_, err = io.CopyN(tw, f, st.Size)
		return err == nil, err
	}
	return true, w.dir(clone, prefix, true)
}

// cover is how many mounts to unmount at a path to uncover a mount.
type cover struct {
	path  string
	count int
}

// uncover lists, for each path on the way to m's mountpoint, how many
// mounts sit above the one that leads to m. Mounts on one path form a chain
// (each stacked on the one before, fs/namespace.c attaches a new mount on
// top), so umount2(path) removes them from the top down.
func uncover(m *forest.Mount) []cover {
	var chain []*forest.Mount // root ... m
	for x := m; x != nil; x = x.Parent {
		chain = append([]*forest.Mount{x}, chain...)
	}
	onPath := map[*forest.Mount]bool{}
	for _, x := range chain {
		onPath[x] = true
	}
	var out []cover
	var prefixes []string
	for p := m.Mountpoint; p != "/"; p = path.Dir(p) {
		prefixes = append([]string{p}, prefixes...)
	}
	for _, p := range prefixes {
		// The deepest mount of the chain with a mountpoint above p.
		var a *forest.Mount
		for _, x := range chain {
			if x.Mountpoint != p && (x.Mountpoint == "/" || strings.HasPrefix(p, x.Mountpoint+"/")) {
				a = x
			}
		}
		cur := childAt(a, p)
		for cur != nil && onPath[cur] {
			cur = childAt(cur, p)
		}
		n := 0
		for ; cur != nil; cur = childAt(cur, p) {
			n++
		}
		if n > 0 {
			out = append(out, cover{p, n})
		}
	}
	return out
}

func childAt(m *forest.Mount, p string) *forest.Mount {
	if m == nil {
		return nil
	}
	for _, c := range m.Children {
		if c.Mountpoint == p {
			return c
		}
	}
	return nil
}

type archiver struct {
	mnt   uint64 // the mount being read; a clone has no submounts, in place it may
	tw    *tar.Writer
	links map[[2]uint64]string // (dev, ino) of files with nlink > 1 -> first name
	view  *images.IDMaps       // see writeTmpfsContent
}

// dir archives the directory fd as name, and everything below it.
func (w *archiver) dir(fd int, name string, withSelf bool) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if withSelf {
		if err := w.tw.WriteHeader(w.header(name+"/", tar.TypeDir, &st)); err != nil {
			return err
		}
	}
	dup, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	dirf := os.NewFile(uintptr(dup), name)
	names, err := dirf.Readdirnames(-1)
	dirf.Close()
	if err != nil {
		return err
	}
	slices.Sort(names)
	for _, n := range names {
		if err := w.entry(fd, n, name+"/"+n); err != nil {
			return err
		}
	}
	return nil
}

func (w *archiver) entry(dirfd int, base, name string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	var stx unix.Statx_t
	if err := unix.Statx(dirfd, base, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &stx); err != nil {
		return err
	}
	submount := stx.Mnt_id != w.mnt
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if submount {
			return w.tw.WriteHeader(w.header(name+"/", tar.TypeDir, &st)) // a mountpoint: not its content
		}
		fd, err := unix.Openat(dirfd, base, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return w.dir(fd, name, true)
	case unix.S_IFLNK:
		buf := make([]byte, unix.PathMax)
		n, err := unix.Readlinkat(dirfd, base, buf)
		if err != nil {
			return err
		}
		h := w.header(name, tar.TypeSymlink, &st)
		h.Linkname = string(buf[:n])
		return w.tw.WriteHeader(h)
	case unix.S_IFREG:
		key := [2]uint64{st.Dev, st.Ino}
		if first, ok := w.links[key]; ok {
			h := w.header(name, tar.TypeLink, &st)
			h.Linkname = first
			return w.tw.WriteHeader(h)
		}
		if st.Nlink > 1 {
			w.links[key] = name
		}
		fd, err := unix.Openat(dirfd, base, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		h := w.header(name, tar.TypeReg, &st)
		h.Size = st.Size
		if submount {
			h.Size = 0 // a file mountpoint: not the mounted file's content
			return w.tw.WriteHeader(h)
		}
		if err := w.tw.WriteHeader(h); err != nil {
			return err
		}
		_, err = io.CopyN(w.tw, f, st.Size)
		return err
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO:
		kind := map[uint32]byte{unix.S_IFCHR: tar.TypeChar, unix.S_IFBLK: tar.TypeBlock, unix.S_IFIFO: tar.TypeFifo}[st.Mode&unix.S_IFMT]
		h := w.header(name, kind, &st)
		h.Devmajor, h.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
		return w.tw.WriteHeader(h)
	}
	return nil // sockets are not archived, as with tar
}

// header is the tar header of an entry, its owners as the root task's
// user namespace shows them (w.view), as CRIU's tar run inside it writes
// them.
func (w *archiver) header(name string, kind byte, st *unix.Stat_t) *tar.Header {
	h := header(name, kind, st)
	if w.view != nil {
		h.Uid, h.Gid = containerID(w.view.UID, h.Uid), containerID(w.view.GID, h.Gid)
	}
	return h
}

// containerID is the id a user namespace with extents es shows for id of
// this one, the overflow id for one it does not map.
func containerID(es []images.IDExtent, id int) int {
	if v, ok := images.FromParent(es, id); ok {
		return v
	}
	return images.OverflowID
}

func header(name string, kind byte, st *unix.Stat_t) *tar.Header {
	return &tar.Header{Name: path.Clean(name) + map[bool]string{true: "/", false: ""}[kind == tar.TypeDir && name != "./"],
		Typeflag: kind, Mode: int64(st.Mode & 0o7777), Uid: int(st.Uid), Gid: int(st.Gid),
		ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec), Format: tar.FormatPAX}
}
