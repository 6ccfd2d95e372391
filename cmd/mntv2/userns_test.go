package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/nsexec"
	"github.com/mntv2/mntv2/internal/testns"
	"golang.org/x/sys/unix"
)

var ctMaps = images.IDMaps{
	UID: []images.IDExtent{{First: 0, Lower: 100000, Count: 65536}},
	GID: []images.IDExtent{{First: 0, Lower: 100000, Count: 65536}},
}

// usernsImages writes the images of a container whose mount namespace its
// own user namespace (ctMaps) owned, with an idmapped tmpfs volume at /vol
// (mntv2's dump-side record has its maps) and a tmpfs of its own at /tmp,
// whose content CRIU archived with tar inside the container's user
// namespace: owners as it showed them there.
func usernsImages(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	d, err := images.Open(dir)
	must(t, err)
	defer d.Close()
	const ns, userns, volDev, tmpDev = 10, 20, 47<<20 | 7, 47<<20 | 8
	var mounts []images.Mount
	for _, m := range []forest.Mount{
		{ID: 1, Dev: 8<<20 | 1, Root: "/", Mountpoint: "/", FSType: "ext4", Source: "/dev/vda", Flags: forest.Relatime},
		{ID: 2, ParentID: 1, Dev: volDev, Root: "/", Mountpoint: "/vol", FSType: "tmpfs", Source: "vol", Flags: forest.Relatime},
		{ID: 3, ParentID: 1, Dev: tmpDev, Root: "/", Mountpoint: "/tmp", FSType: "tmpfs", Source: "tmp", Flags: forest.Relatime,
			Options: "size=4096k,uid=0,gid=0"}, // as CRIU writes them: the root task's user namespace's ids
	} {
		mounts = append(mounts, forest.ToImageMount(&m))
	}
	write := func(img *images.Image, err error) {
		t.Helper()
		must(t, err)
		must(t, d.WriteImage(img))
	}
	write(images.EncodeMounts(ns, mounts))
	write(images.EncodeUserns(userns, ctMaps))
	write(images.EncodeTaskIDs(1, images.TaskIDs{MntNS: ns, UserNS: userns}))
	write(images.EncodeTasks([]images.Task{{Pid: 1, Pgid: 1, Sid: 1, Threads: []uint32{1}}}))
	write(images.EncodeInventory(images.TaskIDs{MntNS: ns, UserNS: userns}))
	archive := func(dev uint32) {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		tw := tar.NewWriter(zw)
		for _, h := range []tar.Header{
			{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
			{Name: "./root-owned", Typeflag: tar.TypeReg, Mode: 0o644},
			{Name: "./user-owned", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 1000, Gid: 1002},
		} {
			must(t, tw.WriteHeader(&h))
		}
		must(t, tw.Close())
		must(t, zw.Close())
		must(t, d.WriteFile(images.TmpfsFile(dev), buf.Bytes(), 0o600))
	}
	archive(volDev)
	archive(tmpDev)
	must(t, d.WriteExtra(&images.Extra{Mounts: []images.ExtraMount{{NS: ns, MntID: 2, IDMap: &ctMaps}}}))
	return dir
}

// mntv2 restore --userns: the namespace is owned by the user namespace
// given, the volume idmapped again with its maps, the files of both tmpfses
// show the owners they showed at dump time, and the container's own tmpfs
// is the container's (its root remounts it); verify says identical. Without
// --userns, or with a user namespace of other maps, the restore refuses
// and says why.
func TestRestoreUserns(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	dir := usernsImages(t)
	root, pins := scratchRoot(t)
	for _, d := range []string{"vol", "tmp"} {
		must(t, os.Mkdir(filepath.Join(root, d), 0o755))
	}
	ctNS, err := nsexec.NewUserNamespace(ctMaps)
	must(t, err)
	defer unix.Close(ctNS)

	run := func(maps *images.IDMaps, extra ...string) (string, int) {
		t.Helper()
		args := append([]string{"restore", "--images", dir, "--root", root, "--pin-dir", pins}, extra...)
		cmd := exec.Command(binary_, args...)
		if maps != nil {
			fd := ctNS
			if maps != &ctMaps {
				var err error
				fd, err = nsexec.NewUserNamespace(*maps)
				must(t, err)
				defer unix.Close(fd)
			}
			cmd.ExtraFiles = []*os.File{os.NewFile(uintptr(fd), "userns")}
			cmd.Args = append(cmd.Args, "--userns", "/proc/self/fd/3")
		}
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	if out, code := run(nil); code == 0 || !strings.Contains(out, "--userns") || !strings.Contains(out, ctMaps.String()) {
		t.Fatalf("without --userns: exit %d: %s", code, out)
	}
	other := images.IDMaps{UID: []images.IDExtent{{First: 0, Lower: 200000, Count: 65536}}, GID: ctMaps.GID}
	if out, code := run(&other); code == 0 || !strings.Contains(out, "has maps "+other.String()) {
		t.Fatalf("with other maps: exit %d: %s", code, out)
	}
	if out, code := run(&ctMaps); code != 0 {
		t.Fatalf("restore --userns: exit %d: %s", code, out)
	}
	defer mntv2(t, "release", "--pin-dir", pins)
	if out, errs, code := mntv2(t, "verify", "--images", dir, "--pin-dir", pins); code != 0 {
		t.Errorf("verify: exit %d: %s%s", code, out, errs)
	}
	pin := filepath.Join(pins, "mntns-10")
	nm, err := forest.ReadNamespaceFile(pin, 10)
	must(t, err)
	if nm.Owner == nil || nm.Owner.String() != ctMaps.String() {
		t.Errorf("owner of the restored namespace: %v, want %v", nm.Owner, ctMaps)
	}
	var vol *forest.Mount
	for i := range nm.Mounts {
		if nm.Mounts[i].Mountpoint == "/vol" {
			vol = &nm.Mounts[i]
		}
	}
	if vol == nil || vol.IDMap == nil || vol.IDMap.String() != ctMaps.String() {
		t.Fatalf("/vol: %+v, want idmapped %v", vol, ctMaps)
	}
	// The owners, through the idmapped mount and on the container's own
	// tmpfs, as at dump time (the host's ids of the container's).
	fd, err := unix.Open(pin, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(fd)
	var owners string
	must(t, forest.InNamespace(fd, func() error {
		for _, n := range []string{"/vol", "/vol/root-owned", "/vol/user-owned", "/tmp", "/tmp/root-owned", "/tmp/user-owned"} {
			var st unix.Stat_t
			if err := unix.Stat(n, &st); err != nil {
				return err
			}
			owners += fmt.Sprintf("%s %d:%d\n", n, st.Uid, st.Gid)
		}
		return nil
	}))
	want := "/vol 100000:100000\n/vol/root-owned 100000:100000\n/vol/user-owned 101000:101002\n" +
		"/tmp 100000:100000\n/tmp/root-owned 100000:100000\n/tmp/user-owned 101000:101002\n"
	if owners != want {
		t.Errorf("owners:\n%s want\n%s", owners, want)
	}
	// The container's own tmpfs is owned by its user namespace: the
	// kernel makes no inode there for this process's fsuid (the host's
	// root), which that namespace does not map; on the restore root, of
	// the host's, it does.
	must(t, forest.InNamespace(fd, func() error {
		for _, c := range []struct {
			path string
			want error
		}{{"/tmp/probe", unix.EOVERFLOW}, {"/probe", nil}} {
			pfd, err := unix.Open(c.path, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
			if err == nil {
				unix.Close(pfd)
				unix.Unlink(c.path)
			}
			if err != c.want {
				t.Errorf("create %s as the host's root: %v, want %v", c.path, err, c.want)
			}
		}
		return nil
	}))
}
