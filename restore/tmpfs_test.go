package restore

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"github.com/mntv2/mntv2/internal/testns"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

type entry struct {
	name, link string
	typ        byte
	mode       int64
	data       string
	owner      []int // uid, gid; nil: this process's
}

func archive(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode,
			Uid: os.Getuid(), Gid: os.Getgid(), ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
		if e.owner != nil {
			h.Uid, h.Gid = e.owner[0], e.owner[1]
		}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// extractInto extracts into a fresh directory next to an "outside"
// directory holding a canary, and returns both.
func extractInto(t *testing.T, data []byte, limit int64) (root, outside string, err error) {
	t.Helper()
	base := t.TempDir()
	root, outside = filepath.Join(base, "root"), filepath.Join(base, "outside")
	for _, d := range []string{root, outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(outside, "canary"), []byte("canary"), 0o644); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	err = extractTmpfs(bytes.NewReader(data), fd, limit)
	return root, outside, err
}

func listTree(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		r, _ := filepath.Rel(dir, p)
		out = append(out, r+" "+fi.Mode().String())
		return nil
	})
	return strings.Join(out, "\n")
}

func TestExtractTmpfs(t *testing.T) {
	data := archive(t,
		entry{name: "./", typ: tar.TypeDir, mode: 0o1777},
		entry{name: "./a/", typ: tar.TypeDir, mode: 0o750},
		entry{name: "./a/f", typ: tar.TypeReg, mode: 0o640, data: "hello"},
		entry{name: "./a/h", typ: tar.TypeLink, link: "./a/f"},
		entry{name: "./a/l", typ: tar.TypeSymlink, link: "/etc/passwd"},
		entry{name: "./a/up", typ: tar.TypeSymlink, link: "../../outside"},
		entry{name: "./p", typ: tar.TypeFifo, mode: 0o600},
		entry{name: "./deep/er/file", typ: tar.TypeReg, mode: 0o4755, data: "x"},
	)
	root, outside, err := extractInto(t, data, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		". dtrwxrwxrwx", "a drwxr-x---", "a/f -rw-r-----", "a/h -rw-r-----", "a/l Lrwxrwxrwx", "a/up Lrwxrwxrwx",
		"deep drwxr-xr-x", "deep/er drwxr-xr-x", "deep/er/file urwxr-xr-x", "p prw-------",
	}
	if got := listTree(t, root); got != strings.Join(want, "\n") {
		t.Errorf("extracted:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	if b, _ := os.ReadFile(filepath.Join(root, "a/f")); string(b) != "hello" {
		t.Errorf("a/f holds %q", b)
	}
	var a, b unix.Stat_t
	_ = unix.Stat(filepath.Join(root, "a/f"), &a)
	_ = unix.Stat(filepath.Join(root, "a/h"), &b)
	if a.Ino != b.Ino {
		t.Error("a/h is not a hard link of a/f")
	}
	if l, _ := os.Readlink(filepath.Join(root, "a/l")); l != "/etc/passwd" {
		t.Errorf("a/l -> %q", l)
	}
	if fi, _ := os.Stat(filepath.Join(root, "a/f")); fi.ModTime().Unix() != 1700000000 {
		t.Errorf("a/f mtime %v", fi.ModTime())
	}
	if got := listTree(t, outside); got != ". drwxr-xr-x\ncanary -rw-r--r--" {
		t.Errorf("outside changed:\n%s", got)
	}
}

// TestExtractTmpfsHostile: an archive cannot write, link or follow anything
// outside the new tmpfs, nor exceed its size.
func TestExtractTmpfsHostile(t *testing.T) {
	dir := entry{name: "./", typ: tar.TypeDir, mode: 0o755}
	cases := []struct {
		name    string
		entries []entry
		limit   int64
		want    string
	}{
		{"dotdot", []entry{dir, {name: "../outside/pwn", typ: tar.TypeReg, data: "x"}}, 0, `".." in path`},
		{"dotdot inside", []entry{dir, {name: "a/../../outside/pwn", typ: tar.TypeReg, data: "x"}}, 0, `".." in path`},
		{"absolute", []entry{dir, {name: "/tmp/pwn", typ: tar.TypeReg, data: "x"}}, 0, "absolute path"},
		{"through a symlink it made", []entry{dir,
			{name: "s", typ: tar.TypeSymlink, link: "../outside"},
			{name: "s/pwn", typ: tar.TypeReg, data: "x"}}, 0, "symlink"},
		{"through an absolute symlink", []entry{dir,
			{name: "s", typ: tar.TypeSymlink, link: "/"},
			{name: "s/tmp/pwn", typ: tar.TypeDir}}, 0, "symlink"},
		{"onto a symlink it made", []entry{dir,
			{name: "s", typ: tar.TypeSymlink, link: "../outside/canary"},
			{name: "s", typ: tar.TypeReg, data: "overwrite"}}, 0, "file exists"},
		{"hard link out", []entry{dir, {name: "h", typ: tar.TypeLink, link: "../outside/canary"}}, 0, "outside the archive"},
		{"hard link absolute", []entry{dir, {name: "h", typ: tar.TypeLink, link: "/etc/passwd"}}, 0, "outside the archive"},
		{"hard link through a symlink", []entry{dir,
			{name: "s", typ: tar.TypeSymlink, link: "../outside"},
			{name: "h", typ: tar.TypeLink, link: "s/canary"}}, 0, "hard link target"},
		{"chmod through a symlink", []entry{dir,
			{name: "s", typ: tar.TypeSymlink, link: "../outside"},
			{name: "s/", typ: tar.TypeDir, mode: 0o777}}, 0, "exists and is not a directory"},
		{"one file over the size", []entry{dir, {name: "big", typ: tar.TypeReg, data: strings.Repeat("x", 100)}}, 99, "exceed"},
		{"files over the size together", []entry{dir,
			{name: "a", typ: tar.TypeReg, data: strings.Repeat("x", 60)},
			{name: "b", typ: tar.TypeReg, data: strings.Repeat("x", 60)}}, 100, "exceed"},
		{"root is a file", []entry{{name: ".", typ: tar.TypeReg, data: "x"}}, 0, "not a directory"},
		{"a sparse file", []entry{dir, {name: "s", typ: tar.TypeGNUSparse}}, 0, "tmpfs archive"},
		{"a fifo then a file through it", []entry{dir,
			{name: "p", typ: tar.TypeFifo},
			{name: "p/x", typ: tar.TypeReg, data: "x"}}, 0, "not a directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fds := testns.OpenFDs(t)
			defer func() {
				if got := testns.OpenFDs(t); got != fds {
					t.Errorf("%d fds open after, %d before", got, fds)
				}
			}()
			limit := c.limit
			if limit == 0 {
				limit = 1 << 20
			}
			_, outside, err := extractInto(t, archive(t, c.entries...), limit)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error saying %q", err, c.want)
			}
			if got := listTree(t, outside); got != ". drwxr-xr-x\ncanary -rw-r--r--" {
				t.Errorf("outside changed:\n%s", got)
			}
			if b, _ := os.ReadFile(filepath.Join(outside, "canary")); string(b) != "canary" {
				t.Errorf("canary now %q", b)
			}
		})
	}
	t.Run("data on a directory (a gzip bomb to skip)", func(t *testing.T) {
		_, outside, err := extractInto(t, dirWithData(t, 8<<20), 1<<20)
		if err == nil || !strings.Contains(err.Error(), "bytes of data") {
			t.Errorf("got %v, want an error saying %q", err, "bytes of data")
		}
		if got := listTree(t, outside); got != ". drwxr-xr-x\ncanary -rw-r--r--" {
			t.Errorf("outside changed:\n%s", got)
		}
	})
	for name, data := range map[string][]byte{
		"not gzip":       []byte("this is not an archive"),
		"truncated gzip": archive(t, dir, entry{name: "f", typ: tar.TypeReg, data: strings.Repeat("y", 5000)})[:40],
	} {
		t.Run(name, func(t *testing.T) {
			if _, _, err := extractInto(t, data, 1<<20); err == nil || !strings.Contains(err.Error(), "tmpfs archive") {
				t.Errorf("got %v", err)
			}
		})
	}
}

func TestTmpfsSizeLimit(t *testing.T) {
	for opts, want := range map[string]int64{
		"size=16384k,mode=755": 16 << 20, "size=1g": 1 << 30, "size=512": 512, "size=3M": 3 << 20,
		"size=50%": 0, "mode=1777": 0, "size=": 0, "size=-5": 0, "size=99999999999999999g": 0, "size=x": 0,
	} {
		if got := tmpfsSizeLimit(opts); got != want {
			t.Errorf("%q: %d, want %d", opts, got, want)
		}
	}
}

// Long and deep paths: a name longer than PATH_MAX is refused; a deep but
// legal tree extracts, one lookup of its directory for all its entries.
func TestTmpfsLongAndDeepPaths(t *testing.T) {
	long := strings.Repeat("a", 5000)
	if _, _, err := extractInto(t, archive(t, entry{name: long, typ: tar.TypeReg, mode: 0o644}), 1<<20); err == nil || !strings.Contains(err.Error(), "PATH_MAX") {
		t.Errorf("a %d-byte name: %v, want PATH_MAX", len(long), err)
	}
	deep := strings.TrimSuffix(strings.Repeat("d/", 1500), "/")
	var entries []entry
	for i := 0; i < 200; i++ {
		entries = append(entries, entry{name: fmt.Sprintf("%s/f%d", deep, i), typ: tar.TypeReg, mode: 0o644, data: "x"})
	}
	root, outside, err := extractInto(t, archive(t, entries...), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, deep, "f199")); err != nil || string(b) != "x" {
		t.Errorf("deep file: %q %v", b, err)
	}
	if got := listTree(t, outside); got != ". drwxr-xr-x\ncanary -rw-r--r--" {
		t.Errorf("outside changed:\n%s", got)
	}
}

// Device nodes, fifos and setuid or setgid files are restored as the
// archive has them (as CRIU does), inside the new tmpfs only; the mount's
// own nodev/nosuid flags come from the images.
func TestTmpfsNodesAndSetuid(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mknod of a device needs root")
	}
	dir := entry{name: "./", typ: tar.TypeDir, mode: 0o755}
	root, outside, err := extractInto(t, archive(t, dir,
		entry{name: "null", typ: tar.TypeChar, mode: 0o666},
		entry{name: "fifo", typ: tar.TypeFifo, mode: 0o600},
		entry{name: "suid", typ: tar.TypeReg, mode: 0o4755, data: "#!/bin/sh\n"},
		entry{name: "sgid", typ: tar.TypeDir, mode: 0o2775}), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{
		"null": os.ModeDevice | os.ModeCharDevice | 0o666, "fifo": os.ModeNamedPipe | 0o600,
		"suid": os.ModeSetuid | 0o755, "sgid": os.ModeDir | os.ModeSetgid | 0o775,
	} {
		fi, err := os.Lstat(filepath.Join(root, name))
		if err != nil || fi.Mode() != want {
			t.Errorf("%s: %v %v, want %v", name, fi.Mode(), err, want)
		}
	}
	if got := listTree(t, outside); got != ". drwxr-xr-x\ncanary -rw-r--r--" {
		t.Errorf("outside changed:\n%s", got)
	}
}

// Owners and modes come out as archived whether or not the kernel gave them
// at creation: entries of a setgid directory would otherwise keep its group
// (and a directory the setgid bit).
func TestTmpfsOwnersInSetgidDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to other users needs root")
	}
	root, _, err := extractInto(t, archive(t,
		entry{name: "./", typ: tar.TypeDir, mode: 0o755, owner: []int{0, 0}},
		entry{name: "sg", typ: tar.TypeDir, mode: 0o2775, owner: []int{0, 1234}},
		entry{name: "sg/f", typ: tar.TypeReg, mode: 0o644, owner: []int{0, 0}},
		entry{name: "sg/d", typ: tar.TypeDir, mode: 0o755, owner: []int{0, 0}},
		entry{name: "plain", typ: tar.TypeReg, mode: 0o644, owner: []int{0, 0}},
		entry{name: "other", typ: tar.TypeDir, mode: 0o700, owner: []int{1000, 1001}}), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]struct {
		mode     os.FileMode
		uid, gid uint32
	}{
		"sg": {os.ModeDir | os.ModeSetgid | 0o775, 0, 1234}, "sg/f": {0o644, 0, 0}, "sg/d": {os.ModeDir | 0o755, 0, 0},
		"plain": {0o644, 0, 0}, "other": {os.ModeDir | 0o700, 1000, 1001},
	} {
		fi, err := os.Lstat(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != want.mode || st.Uid != want.uid || st.Gid != want.gid {
			t.Errorf("%s: %v %d:%d, want %v %d:%d", name, fi.Mode(), st.Uid, st.Gid, want.mode, want.uid, want.gid)
		}
	}
}

// A directory keeps its archived mtime although entries are made in it
// after its own entry (tar order), as tar extracts it.
func TestTmpfsDirectoryTimes(t *testing.T) {
	root, _, err := extractInto(t, archive(t,
		entry{name: "./", typ: tar.TypeDir, mode: 0o755},
		entry{name: "d", typ: tar.TypeDir, mode: 0o755},
		entry{name: "d/f", typ: tar.TypeReg, mode: 0o644, data: "x"},
		entry{name: "d/e", typ: tar.TypeDir, mode: 0o755},
		entry{name: "d/e/l", typ: tar.TypeSymlink, link: "../f"},
		entry{name: "d/e/g", typ: tar.TypeDir, mode: 0o755}), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	want := time.Unix(1700000000, 0)
	for _, name := range []string{"d", "d/f", "d/e", "d/e/l", "d/e/g"} {
		fi, err := os.Lstat(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		if !fi.ModTime().Equal(want) {
			t.Errorf("%s: mtime %v, want %v", name, fi.ModTime(), want)
		}
	}
}

// dirWithData is a gzipped tar whose directory entry claims n bytes of
// data (zeros, which compress to almost nothing): tar writers refuse to
// make one, so a file entry's header is patched.
func dirWithData(t *testing.T, n int) []byte {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	if err := tw.WriteHeader(&tar.Header{Name: "d", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(n)}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	b := raw.Bytes()
	b[156] = tar.TypeDir
	copy(b[148:156], "        ")
	sum := 0
	for _, c := range b[:512] {
		sum += int(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	zw.Write(b)
	zw.Close()
	return out.Bytes()
}

// Mountpoints made before the archive is read (premake) end up as the
// archive has them; one the archive lacks stays as made; a non-directory
// in the archive under a premade name fails the extraction.
func TestTmpfsPremade(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to other users needs root")
	}
	extract := func(t *testing.T, data []byte, names ...string) (string, error) {
		root := filepath.Join(t.TempDir(), "root")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		x := newExtraction(fd, 1<<20)
		defer x.close()
		made := 0
		if err := x.premake(names, func(n int) { made = n }); err != nil || made != len(names) {
			t.Fatalf("premake: %v, %d of %d made", err, made, len(names))
		}
		if err := x.create(bytes.NewReader(data)); err != nil {
			return root, err
		}
		return root, x.setDirTimes()
	}
	root, err := extract(t, archive(t,
		entry{name: "./", typ: tar.TypeDir, mode: 0o755},
		entry{name: "m", typ: tar.TypeDir, mode: 0o700, owner: []int{1000, 1001}},
		entry{name: "m/inside", typ: tar.TypeReg, mode: 0o644, data: "hidden under the mount"},
		entry{name: "p", typ: tar.TypeDir, mode: 0o755}), "m", "p", "absent")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := listTree(t, root), ". drwxr-xr-x\nabsent drwxr-xr-x\nm drwx------\nm/inside -rw-r--r--\np drwxr-xr-x"; got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	fi, err := os.Stat(filepath.Join(root, "m"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 1000 || st.Gid != 1001 || !fi.ModTime().Equal(time.Unix(1700000000, 0)) {
		t.Errorf("m: %d:%d %v, want 1000:1001 and the archive's mtime", st.Uid, st.Gid, fi.ModTime())
	}
	if _, err := extract(t, archive(t, entry{name: "m", typ: tar.TypeReg, mode: 0o644, data: "x"}), "m"); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("a file under a premade directory's name: %v, want an error", err)
	}
}

// TestTmpfsGNUTar extracts what CRIU writes: GNU tar with CRIU's flags
// (criu/filesystems.c tmpfs_dump), so sparse files as GNU sparse entries,
// long names as GNU long-name entries, and hard links. A sparse file much
// larger than the tmpfs comes back with its holes, taking only its data.
func TestTmpfsGNUTar(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil {
		t.Fatal("GNU tar is needed to make the archive: ", err)
	}
	src := t.TempDir()
	long := strings.Repeat("d", 120) + "/" + strings.Repeat("f", 150)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, filepath.Dir(long)), 0o755))
	must(os.WriteFile(filepath.Join(src, long), []byte("long"), 0o644))
	f, err := os.Create(filepath.Join(src, "sparse"))
	must(err)
	must(f.Truncate(1 << 30))
	_, err = f.WriteAt([]byte("head"), 0)
	must(err)
	_, err = f.WriteAt([]byte("middle"), 512<<20)
	must(err)
	f.Close()
	must(os.Link(filepath.Join(src, long), filepath.Join(src, "hardlink")))
	var out bytes.Buffer
	cmd := exec.Command("tar", "--create", "--gzip", "--no-unquote", "--no-wildcards", "--one-file-system",
		"--check-links", "--preserve-permissions", "--sparse", "--numeric-owner", "--directory", src, ".")
	cmd.Stdout = &out
	must(cmd.Run())
	// A 16 MiB limit: the sparse file's data is a few KiB.
	root, _, err := extractInto(t, out.Bytes(), 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	must(unix.Stat(filepath.Join(root, "sparse"), &st))
	if st.Size != 1<<30 || st.Blocks*512 > 1<<20 {
		t.Errorf("sparse file: size %d, %d bytes allocated; want 1 GiB with its holes", st.Size, st.Blocks*512)
	}
	g, err := os.Open(filepath.Join(root, "sparse"))
	must(err)
	defer g.Close()
	b := make([]byte, 6)
	if _, err := g.ReadAt(b, 512<<20); err != nil || string(b) != "middle" {
		t.Errorf("sparse file data at 512 MiB: %q, %v", b, err)
	}
	if data, err := os.ReadFile(filepath.Join(root, long)); err != nil || string(data) != "long" {
		t.Errorf("long name: %q, %v", data, err)
	}
	var a, h unix.Stat_t
	must(unix.Stat(filepath.Join(root, long), &a))
	must(unix.Stat(filepath.Join(root, "hardlink"), &h))
	if a.Ino != h.Ino {
		t.Errorf("hard link is another inode")
	}
}
