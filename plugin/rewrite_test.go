package plugin

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/testns"
	"github.com/mntv2/mntv2/restore"
	"golang.org/x/sys/unix"
)

const fixtures = "../testdata/criu-4.2"

// copyImages copies a fixture's images into a new temporary directory.
func copyImages(t *testing.T, fixture string) string {
	return testns.CopyDir(t, filepath.Join(fixtures, fixture, "images"))
}

// snapshot maps every file of dir to the digest of its bytes.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out, err := tryDigests(dir)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameSnapshot(t *testing.T, what string, want, got map[string]string) {
	t.Helper()
	for n, d := range want {
		if got[n] != d {
			t.Errorf("%s: %s differs from the original (or is missing)", what, n)
		}
	}
	for n := range got {
		if _, ok := want[n]; !ok {
			t.Errorf("%s: %s was left in the images directory", what, n)
		}
	}
}

func openDir(t *testing.T, dir string) *images.Dir {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestStripAndRecover(t *testing.T) {
	dir := copyImages(t, "06-nested-mntns-peers")
	orig := snapshot(t, dir)
	d := openDir(t, dir)
	man, err := Strip(d, 1, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if man == nil || len(man.Files) != 2 {
		t.Fatalf("manifest %+v: want both mountpoints images rewritten", man)
	}
	// CRIU now reads an all-private forest with the same trees.
	f, err := forest.FromImages(d)
	if err != nil {
		t.Fatal(err)
	}
	if g := f.Groups(); len(g) != 0 {
		t.Errorf("rewritten images still have %d sharing groups", len(g))
	}
	if got := f.Len(); got != 31 {
		t.Errorf("rewritten images have %d mounts, want 31", got)
	}
	for _, fr := range man.Files {
		if snapshot(t, dir)[backupPrefix+fr.Name] != orig[fr.Name] {
			t.Errorf("the kept original of %s is not its original bytes", fr.Name)
		}
	}
	if _, err := ReadManifest(d); err != nil {
		t.Fatal(err)
	}
	found, err := Recover(d)
	if err != nil || !found {
		t.Fatalf("Recover = %v, %v; want true, nil", found, err)
	}
	sameSnapshot(t, "after Recover", orig, snapshot(t, dir))
	// Idempotent.
	if found, err := Recover(d); err != nil || found {
		t.Fatalf("second Recover = %v, %v; want false, nil", found, err)
	}
}

func TestStripTwiceStartsFromOriginals(t *testing.T) {
	dir := copyImages(t, "01-seed-reverse-order")
	orig := snapshot(t, dir)
	d := openDir(t, dir)
	if _, err := Strip(d, 1, "", nil); err != nil {
		t.Fatal(err)
	}
	once := snapshot(t, dir)
	if _, err := Strip(d, 2, "", nil); err != nil {
		t.Fatal(err)
	}
	twice := snapshot(t, dir)
	name := images.MountpointsFile(10)
	if twice[backupPrefix+name] != orig[name] || twice[name] != once[name] {
		t.Errorf("a second pre-restore did not start from the originals")
	}
	if _, err := Recover(d); err != nil {
		t.Fatal(err)
	}
	sameSnapshot(t, "after two rewrites and Recover", orig, snapshot(t, dir))
}

func TestStripNothingToDo(t *testing.T) {
	dir := copyImages(t, "05-overmounts")
	orig := snapshot(t, dir)
	man, err := Strip(openDir(t, dir), 1, "", nil)
	if err != nil || man != nil {
		t.Fatalf("Strip of images without sharing = %+v, %v; want nil, nil", man, err)
	}
	sameSnapshot(t, "untouched", orig, snapshot(t, dir))
}

// A crash at any point of the rewrite (the process killed: nothing after
// that point runs) leaves a directory Recover makes byte-identical again,
// and a following Strip works.
func TestStripCrashAtEveryStep(t *testing.T) {
	var steps []string
	probe := copyImages(t, "06-nested-mntns-peers")
	if _, err := Strip(openDir(t, probe), 1, "", func(s string) error { steps = append(steps, s); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(steps) != 5 { // manifest, 2 backups, 2 rewrites
		t.Fatalf("steps %v", steps)
	}
	crash := errors.New("killed")
	for k := range steps {
		for _, leftover := range []bool{false, true} {
			dir := copyImages(t, "06-nested-mntns-peers")
			orig := snapshot(t, dir)
			d := openDir(t, dir)
			i := 0
			_, err := Strip(d, 1, "", func(string) error {
				i++
				if i > k {
					return crash
				}
				return nil
			})
			if !errors.Is(err, crash) {
				t.Fatalf("crash at %s: %v", steps[k], err)
			}
			if leftover {
				// Killed inside a crash-safe write: its temporary file stays.
				tmp := filepath.Join(dir, tempPrefix+"0123-"+images.MountpointsFile(10))
				if err := os.WriteFile(tmp, []byte("partial"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := Recover(d); err != nil {
				t.Fatalf("crash at %s: Recover: %v", steps[k], err)
			}
			sameSnapshot(t, "crash at "+steps[k], orig, snapshot(t, dir))
			if _, err := Strip(d, 1, "", nil); err != nil {
				t.Fatalf("crash at %s: the next Strip: %v", steps[k], err)
			}
			if _, err := Recover(d); err != nil {
				t.Fatal(err)
			}
			sameSnapshot(t, "crash at "+steps[k]+", then a full rewrite", orig, snapshot(t, dir))
		}
	}
}

// A corrupt manifest does not stop recovery: the kept originals go back.
func TestRecoverCorruptManifest(t *testing.T) {
	dir := copyImages(t, "01-seed-reverse-order")
	orig := snapshot(t, dir)
	d := openDir(t, dir)
	if _, err := Strip(d, 1, "", nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ManifestName), []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Recover(d); err != nil {
		t.Fatal(err)
	}
	sameSnapshot(t, "after Recover with a corrupt manifest", orig, snapshot(t, dir))
}

func TestStripReadOnlyDir(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	dir := copyImages(t, "01-seed-reverse-order")
	orig := snapshot(t, dir)
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, 0) })
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	_, err := Strip(openDir(t, dir), 1, "", nil)
	if !errors.Is(err, ErrReadOnly) || !strings.Contains(err.Error(), "not writable") {
		t.Fatalf("Strip on a read-only directory: %v; want ErrReadOnly", err)
	}
	sameSnapshot(t, "read-only", orig, snapshot(t, dir))
}

// The watcher puts the originals back when the owner (CRIU) dies before
// post-restore, and leaves a newer rewrite alone.
func TestWatcherRecoversWhenOwnerDies(t *testing.T) {
	dir := copyImages(t, "02-peers-no-common-root")
	orig := snapshot(t, dir)
	d := openDir(t, dir)
	owner := exec.Command("sleep", "60")
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = owner.Process.Kill(); _ = owner.Wait() }()
	man, err := Strip(d, owner.Process.Pid, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := StartWatcher(d, owner.Process.Pid, man.Token, ""); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if !slices.Contains(keys(snapshot(t, dir)), ManifestName) {
		t.Fatal("the watcher recovered while the owner was alive")
	}
	if err := owner.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = owner.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for d.Exists(ManifestName) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	sameSnapshot(t, "after the owner died", orig, snapshot(t, dir))
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// Regression (make bench, 5000 mounts): StartWatcher handed the images
// directory's own fd to the child wrapped in an *os.File, whose finalizer
// closed it at the next GC, so the rewrite that followed failed with EBADF.
func TestStartWatcherKeepsTheDirFd(t *testing.T) {
	dir := copyImages(t, "01-seed-reverse-order")
	d := openDir(t, dir)
	owner := exec.Command("sleep", "60")
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = owner.Process.Kill(); _ = owner.Wait() }()
	if err := StartWatcher(d, owner.Process.Pid, NewToken(), ""); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.GC()
	if _, err := d.Names(); err != nil {
		t.Fatalf("the images directory fd is gone: %v", err)
	}
}

// The mounts Rewrite hands post-restore (Originals) are those
// forest.ImageNamespaces reads from the originals, owners and dump-side
// record included: the plan of the resident hook is the plan of the hook
// run afresh.
func TestRewriteOriginalsAreTheImages(t *testing.T) {
	ents, err := os.ReadDir(fixtures)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		t.Run(e.Name(), func(t *testing.T) {
			dir := copyImages(t, e.Name())
			d, err := images.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			want, err := forest.ImageNamespaces(d)
			if err != nil {
				t.Fatal(err)
			}
			var got []forest.NamespaceMounts
			if _, err := Rewrite(d, os.Getpid(), "", RewriteOptions{Mode: ModeReduce, Originals: &got}); err != nil {
				t.Fatal(err)
			}
			if _, err := Recover(d); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Originals differ from forest.ImageNamespaces:\n got %+v\nwant %+v", got[0], want[0])
			}
		})
	}
}

// A manifest's helper mounts read back as they were written, from a
// version 2 manifest (image records) and from a version 1 one (Go structs,
// as mntv2 wrote them before); a newer version is refused.
func TestManifestVersions(t *testing.T) {
	// Peers /x and /y of a tmpfs and no mount of its root: a helper is
	// needed (no real checkpoint has one: CRIU refuses to dump the tmpfs).
	nm := forest.NamespaceMounts{ID: 1}
	for _, m := range []forest.Mount{
		{ID: 1, Dev: 8<<20 | 1, Root: "/", Mountpoint: "/", FSType: "ext4", Source: "/dev/vda", Flags: forest.Relatime},
		{ID: 10, ParentID: 1, Dev: 47<<20 | 2, Root: "/a", Mountpoint: "/x", FSType: "tmpfs", Source: "t", PeerGroup: 1, Flags: forest.Relatime | forest.NoSuid},
		{ID: 11, ParentID: 1, Dev: 47<<20 | 2, Root: "/b", Mountpoint: "/y", FSType: "tmpfs", Source: "t", PeerGroup: 1, Flags: forest.Relatime},
	} {
		e := forest.ToImageMount(&m)
		nm.Mounts = append(nm.Mounts, forest.FromImageMount(&e))
	}
	f, err := forest.Build([]forest.NamespaceMounts{nm})
	if err != nil {
		t.Fatal(err)
	}
	helpers, err := restore.LiveHelpers(f)
	if err != nil || len(helpers) != 1 {
		t.Fatalf("LiveHelpers: %v, %v", helpers, err)
	}
	for _, version := range []int{1, 2} {
		man := &Manifest{Version: version, Token: "t", Owner: 1, Mode: ModeReduce, Helpers: helpers}
		data, err := json.Marshal(man)
		if err != nil {
			t.Fatal(err)
		}
		if version == 2 && !strings.Contains(string(data), `"mnt_entry"`) {
			t.Errorf("version 2 does not store image records: %s", data)
		}
		var got Manifest
		if err := json.Unmarshal(data, &got); err != nil {
			t.Fatalf("version %d: %v", version, err)
		}
		if !reflect.DeepEqual(got.Helpers, helpers) {
			t.Errorf("version %d: helpers read back differ:\n got %+v\nwant %+v", version, got.Helpers, helpers)
		}
	}
	var got Manifest
	if err := json.Unmarshal([]byte(`{"version":3}`), &got); err == nil || !strings.Contains(err.Error(), "newer mntv2") {
		t.Errorf("version 3: %v", err)
	}
}

// tryDigests is snapshot, with an error where the directory changes while
// it reads.
func tryDigests(dir string) (map[string]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(b)
		out[e.Name()] = hex.EncodeToString(sum[:])
	}
	return out, nil
}

// The Notify's pre-restore takes the rewrite prepared at dump in Go
// (RewriteOptions.Prepared): it writes what computing the rewrite again
// writes, the same manifest for its owner and token, and the images are
// byte-identical once recovered, the prepared files included. A changed
// image, or no preparation, has it computed again, saying why.
func TestRewritePrepared(t *testing.T) {
	for _, tc := range []struct {
		name    string
		prepare bool
		touch   bool
		why     string
	}{
		{name: "prepared", prepare: true},
		{name: "image changed", prepare: true, touch: true, why: "the images changed since the rewrite was prepared"},
		{name: "none", why: "no rewrite was prepared at dump"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyImages(t, "02-peers-no-common-root")
			testns.WriteFilesImage(t, dir)
			d := openDir(t, dir)
			if tc.prepare {
				if err := Prepare(d, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
					t.Fatal(err)
				}
			}
			if tc.touch {
				later := time.Now().Add(time.Minute)
				if err := os.Chtimes(filepath.Join(dir, "inventory.img"), later, later); err != nil {
					t.Fatal(err)
				}
			}
			before := snapshot(t, dir)
			// What computing the rewrite makes of the same images.
			ref := copyImages(t, "02-peers-no-common-root")
			testns.WriteFilesImage(t, ref)
			rd := openDir(t, ref)
			want, err := Rewrite(rd, 7, "tok", RewriteOptions{Mode: ModeReduce})
			if err != nil || want == nil {
				t.Fatalf("reference rewrite: %v %v", want, err)
			}
			var why string
			var originals []forest.NamespaceMounts
			got, err := Rewrite(d, 7, "tok", RewriteOptions{Mode: ModeReduce, Prepared: &why, Originals: &originals})
			if err != nil || got == nil {
				t.Fatalf("rewrite: %v %v", got, err)
			}
			if why != tc.why {
				t.Errorf("why not prepared: %q, want %q", why, tc.why)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("manifest:\n%+v\nwant\n%+v", got, want)
			}
			for _, fr := range want.Files {
				a, _ := os.ReadFile(filepath.Join(ref, fr.Name))
				b, _ := os.ReadFile(filepath.Join(dir, fr.Name))
				if !bytes.Equal(a, b) || len(a) == 0 {
					t.Errorf("%s: %d bytes, want the %d of the computed rewrite", fr.Name, len(b), len(a))
				}
			}
			if n := 0; len(originals) == 0 {
				t.Error("no originals")
			} else {
				for _, ns := range originals {
					n += len(ns.Mounts)
				}
				if n <= len(want.Kept) {
					t.Errorf("originals: %d mounts, not more than the %d kept", n, len(want.Kept))
				}
			}
			if _, err := Recover(d); err != nil {
				t.Fatal(err)
			}
			sameSnapshot(t, "recovered", before, snapshot(t, dir))
		})
	}
}
