package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/testns"
	"golang.org/x/sys/unix"
)

// scratchRoot mounts a tmpfs to restore into, like the fixtures' container
// root, inside the test's own namespace.
func scratchRoot(t *testing.T) (root, pins string) {
	t.Helper()
	dir := t.TempDir()
	root = filepath.Join(dir, "root")
	pins = filepath.Join(dir, "pins")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("ctroot", root, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(root, unix.MNT_DETACH) })
	return root, pins
}

func mountinfoLines(t *testing.T) []string {
	t.Helper()
	// thread-self: the main thread may be wedged in another namespace (a
	// goroutine that entered one and exited while locked to it).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b, err := os.ReadFile("/proc/thread-self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// dropRootLine drops the second line of show's text: the root mount.
func dropRootLine(s string) string {
	lines := strings.Split(s, "\n")
	if len(lines) < 2 {
		return s
	}
	return strings.Join(append(lines[:1:1], lines[2:]...), "\n")
}

// TestRestoreFixtures restores every fixture with --ext-mount-map auto,
// checks every namespace with verify --pin-dir, and that release leaves
// the mount table exactly as before.
func TestRestoreFixtures(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	dirs, _ := filepath.Glob(filepath.Join(fixtures, "0*"))
	if len(dirs) != 7 {
		t.Fatalf("want 7 fixtures, got %d", len(dirs))
	}
	for _, fix := range dirs {
		t.Run(filepath.Base(fix), func(t *testing.T) {
			imgs := filepath.Join(fix, "images")
			root, pins := scratchRoot(t)
			before := mountinfoLines(t)
			out, errs, code := mntv2(t, "restore", "--images", imgs, "--root", root, "--pin-dir", pins,
				"--ext-mount-map", "auto", "--report", filepath.Join(t.TempDir(), "report.json"))
			if code != 0 {
				t.Fatalf("restore: exit %d\n%s%s", code, out, errs)
			}
			nsCount := strings.Count(out, "pinned at")
			mis, _ := filepath.Glob(filepath.Join(fix, "mountinfo", "*.mountinfo"))
			if nsCount != len(mis) {
				t.Fatalf("restored %d namespaces, the fixture has %d:\n%s", nsCount, len(mis), out)
			}
			out, errs, code = mntv2(t, "verify", "--images", imgs, "--pin-dir", pins)
			if code != 0 || !strings.HasPrefix(out, "identical: ") {
				t.Fatalf("verify: exit %d\n%s%s", code, out, errs)
			}
			// show --canonical prints the restored trees as the captured
			// originals, the root mount's line (compared by mountpoint only)
			// aside.
			for _, mi := range mis {
				id := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(mi), "mntns-"), ".mountinfo")
				orig, errs, code := mntv2(t, "show", "--canonical", "--mountinfo", mi, "--mntns", id)
				if code != 0 {
					t.Fatalf("show --mountinfo: exit %d: %s", code, errs)
				}
				restored, errs, code := mntv2(t, "show", "--canonical", "--pin-dir", pins, "--mntns", id)
				if code != 0 {
					t.Fatalf("show --pin-dir: exit %d: %s", code, errs)
				}
				if a, b := dropRootLine(orig), dropRootLine(restored); a != b {
					t.Errorf("namespace %s: canonical trees differ:\noriginal:\n%s\nrestored:\n%s", id, a, b)
				}
			}
			if got := len(mountinfoLines(t)); got != len(before)+nsCount {
				t.Errorf("while restored: %d mounts here, want %d + %d pins", got, len(before), nsCount)
			}
			out, errs, code = mntv2(t, "release", "--pin-dir", pins)
			if code != 0 || strings.Count(out, "released") != nsCount {
				t.Fatalf("release: exit %d\n%s%s", code, out, errs)
			}
			if after := mountinfoLines(t); strings.Join(after, "\n") != strings.Join(before, "\n") {
				t.Errorf("mounts after release differ from before:\nbefore %d:\n%s\nafter %d:\n%s",
					len(before), strings.Join(before, "\n"), len(after), strings.Join(after, "\n"))
			}
		})
	}
}

// TestHostileRoot: a root whose directories are symlinks out of it, and
// images whose paths climb out with "..", are refused; a canary directory
// outside the root and the mount table show nothing outside was touched.
func TestHostileRoot(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	const fixture = "01-seed-reverse-order"
	editMounts := func(t *testing.T, dir string, edit func(ms []images.Mount)) {
		d, err := images.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		ms, err := d.Mounts(10)
		if err != nil {
			t.Fatal(err)
		}
		edit(ms)
		img, err := images.EncodeMounts(10, ms)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.WriteImage(img); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name  string
		links map[string]string // in the root: name -> symlink target
		edit  func(ms []images.Mount)
		code  int
		want  []string
	}{
		{name: "tmp is a symlink to /", links: map[string]string{"tmp": "/"},
			code: 1, want: []string{"mount 73 (/tmp)", "symlink"}},
		{name: "etc is a relative symlink out", links: map[string]string{"etc": "../outside"},
			code: 1, want: []string{"mount 68 (external /etc)", "symlink"}},
		{name: "dev is a symlink to /dev", links: map[string]string{"dev": "/dev"},
			code: 1, want: []string{"(/dev)", "symlink"}},
		{name: "mountpoint with ..", edit: func(ms []images.Mount) {
			for i := range ms {
				if ms[i].Mountpoint == "/tmp/src1" {
					ms[i].Mountpoint = "/tmp/../../outside"
				}
			}
		}, code: 2, want: []string{"/tmp/../../outside", `contains ".."`}},
		{name: "root with ..", edit: func(ms []images.Mount) {
			for i := range ms {
				if ms[i].Mountpoint == "/etc" {
					ms[i].Root = "/../../outside"
				}
			}
		}, code: 2, want: []string{"/../../outside", `contains ".."`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			imgs := copyImages(t, fixture)
			if c.edit != nil {
				editMounts(t, imgs, c.edit)
			}
			root, pins := scratchRoot(t)
			outside := filepath.Join(filepath.Dir(root), "outside")
			if err := os.Mkdir(outside, 0o755); err != nil {
				t.Fatal(err)
			}
			canary := filepath.Join(outside, "canary")
			if err := os.WriteFile(canary, []byte("untouched\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			for name, target := range c.links {
				if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
					t.Fatal(err)
				}
			}
			listing := func(dir string) string { return listing(t, dir) }
			beforeRoot, beforeSlash := listing(root), listing("/")
			before := mountinfoLines(t)

			out, errs, code := mntv2(t, "restore", "--images", imgs, "--root", root, "--pin-dir", pins, "--ext-mount-map", "auto")
			if code != c.code {
				t.Fatalf("restore: exit %d, want %d\n%s%s", code, c.code, out, errs)
			}
			for _, w := range c.want {
				if !strings.Contains(errs, w) {
					t.Errorf("error %q does not say %q", errs, w)
				}
			}
			if b, err := os.ReadFile(canary); err != nil || string(b) != "untouched\n" {
				t.Errorf("canary: %q, %v", b, err)
			}
			if got := listing(outside); got != "canary" {
				t.Errorf("outside the root now holds %q", got)
			}
			if got := listing(root); got != beforeRoot {
				t.Errorf("root holds %q, before %q", got, beforeRoot)
			}
			if got := listing("/"); got != beforeSlash {
				t.Errorf("/ holds %q, before %q", got, beforeSlash)
			}
			if after := mountinfoLines(t); strings.Join(after, "\n") != strings.Join(before, "\n") {
				t.Errorf("mount table changed:\n%s", strings.Join(after, "\n"))
			}
			if _, err := os.Stat(pins); err == nil {
				if l := listing(pins); l != "" {
					t.Errorf("pins left: %s", l)
				}
			}
		})
	}
}
