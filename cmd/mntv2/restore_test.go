package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

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
