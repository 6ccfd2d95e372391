package restore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/testns"
	"golang.org/x/sys/unix"
)

// The main goroutine keeps the main thread, so no goroutine that enters a
// namespace can leave the main thread wedged in it.
func init() { runtime.LockOSThread() }

const fixtures = "../testdata/criu-4.2"

// state is what a failed restore must leave exactly as it was.
type state struct {
	mounts  string   // this thread's mountinfo
	fds     []string // open fds and what they point to
	tree    []string // the restore root's entries
	pins    []string
	foreign []string // threads in another mount namespace
}

func snapshot(t *testing.T, root, pins string) state {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var s state
	b, err := os.ReadFile("/proc/thread-self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	s.mounts = string(b)
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		if !strings.HasPrefix(target, "/proc/") { // the ReadDir's own fd
			s.fds = append(s.fds, e.Name()+" -> "+target)
		}
	}
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		s.tree = append(s.tree, p)
		return nil
	})
	s.pins, _ = Pins(pins)
	self, _ := os.Readlink("/proc/thread-self/ns/mnt")
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		ns, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/mnt")
		if err == nil && ns != self {
			s.foreign = append(s.foreign, task.Name()+" in "+ns)
		}
	}
	return s
}

func (s state) diff(o state) string {
	var d []string
	if s.mounts != o.mounts {
		d = append(d, "mounts:\n"+s.mounts+"---\n"+o.mounts)
	}
	if !slices.Equal(s.fds, o.fds) {
		d = append(d, fmt.Sprintf("fds: %v -> %v", s.fds, o.fds))
	}
	if !slices.Equal(s.tree, o.tree) {
		d = append(d, fmt.Sprintf("restore root: %v -> %v", s.tree, o.tree))
	}
	if !slices.Equal(s.pins, o.pins) {
		d = append(d, fmt.Sprintf("pins: %v -> %v", s.pins, o.pins))
	}
	if len(o.foreign) > 0 {
		d = append(d, fmt.Sprintf("threads left in other namespaces: %v", o.foreign))
	}
	return strings.Join(d, "\n")
}

// settle waits for the threads of ended workers to exit: the runtime ends a
// locked thread after its goroutine returns.
func settle(t *testing.T, root, pins string, want state) state {
	var s state
	for range 100 {
		if s = snapshot(t, root, pins); want.diff(s) == "" {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s
}

func loadFixture(t *testing.T, name string) (*images.Dir, Input) {
	t.Helper()
	d, err := images.Open(filepath.Join(fixtures, name, "images"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	in, err := LoadInput(d)
	if err != nil {
		t.Fatal(err)
	}
	in.Auto = true
	return d, in
}

func scratch(t *testing.T) (root, pins string) {
	t.Helper()
	dir := t.TempDir()
	root, pins = filepath.Join(dir, "root"), filepath.Join(dir, "pins")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(pins, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("ctroot", root, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(root, unix.MNT_DETACH) })
	return root, pins
}

// TestFaultInjection fails each mount syscall of a restore in turn: every
// failure is a clear error, and nothing is left: mounts, fds, mountpoints
// created in the root, pins, threads in a namespace.
func TestFaultInjection(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	for _, fix := range []string{"06-nested-mntns-peers", "04-content-ro-file-unbindable", "02-peers-no-common-root"} {
		t.Run(fix, func(t *testing.T) {
			d, in := loadFixture(t, fix)
			plan, err := NewPlan(in)
			if err != nil {
				t.Fatal(err)
			}
			root, pins := scratch(t)
			before := snapshot(t, root, pins)
			res, err := Apply(plan, Options{Root: root, PinDir: pins, Images: d})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Release(pins); err != nil {
				t.Fatal(err)
			}
			// A successful restore creates mountpoints in the root: start each
			// failing run from the same root as the first.
			if err := unix.Unmount(root, unix.MNT_DETACH); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mount("ctroot", root, "tmpfs", 0, ""); err != nil {
				t.Fatal(err)
			}
			before = settle(t, root, pins, before)
			if res.Syscalls < 20 {
				t.Fatalf("only %d mount syscalls counted", res.Syscalls)
			}
			for n := 1; n <= res.Syscalls; n++ {
				_, err := Apply(plan, Options{Root: root, PinDir: pins, Images: d, Hooks: Hooks{FailSyscall: n}})
				if err == nil {
					Release(pins)
					t.Fatalf("syscall %d of %d: the restore did not fail", n, res.Syscalls)
				}
				var se *StepError
				if !errors.As(err, &se) || !errors.Is(err, ErrInjected) || se.Syscall == "" || se.What == "" {
					t.Fatalf("syscall %d: want a StepError naming the step, mount and syscall, got %v", n, err)
				}
				if !strings.Contains(err.Error(), se.Syscall) || !strings.Contains(err.Error(), string(se.Step.Op)) {
					t.Fatalf("syscall %d: error does not say the step and syscall: %v", n, err)
				}
				if d := before.diff(settle(t, root, pins, before)); d != "" {
					t.Fatalf("after failing syscall %d (%v):\n%s", n, err, d)
				}
			}
			t.Logf("%s: each of %d mount syscalls failed in turn, nothing left behind", fix, res.Syscalls)
		})
	}
}

// TestApplyFixturesReport restores a fixture in-process and checks the
// result: ids of every mount, time per phase, helpers.
func TestApplyFixturesReport(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	d, in := loadFixture(t, "02-peers-no-common-root")
	plan, err := NewPlan(in)
	if err != nil {
		t.Fatal(err)
	}
	root, pins := scratch(t)
	res, err := Apply(plan, Options{Root: root, PinDir: pins, Images: d, MountIDs: true})
	if err != nil {
		t.Fatal(err)
	}
	defer Release(pins)
	if res.Helpers != 1 || len(res.Namespaces) != 1 {
		t.Fatalf("helpers %d, namespaces %d", res.Helpers, len(res.Namespaces))
	}
	ns := res.Namespaces[0]
	if len(ns.Mounts) != len(in.Forest.Namespaces[0].Mounts) || ns.Count != len(ns.Mounts) {
		t.Errorf("%d mount ids reported, count %d, want %d", len(ns.Mounts), ns.Count, len(in.Forest.Namespaces[0].Mounts))
	}
	nm, err := forest.ReadNamespaceFile(ns.Pin, ns.ID)
	if err != nil {
		t.Fatal(err)
	}
	live := map[uint64]bool{}
	for _, m := range nm.Mounts {
		live[uint64(m.ID)] = true
	}
	for img, id := range ns.Mounts {
		if !live[id] {
			t.Errorf("image mount %d -> %d: no such mount in the restored namespace", img, id)
		}
	}
	var phases []string
	for _, p := range res.Phases {
		phases = append(phases, p.Phase)
	}
	if want := []string{"create", "assemble", "sharing", "flags", "finish"}; !slices.Equal(phases, want) {
		t.Errorf("phases %v, want %v", phases, want)
	}
}
