package plugin

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/testns"
	"github.com/mntv2/mntv2/restore"
	"golang.org/x/sys/unix"
)

// restoreStripped restores a fixture's images with sharing stripped, as
// CRIU does after pre-restore, into pinned namespaces; it returns the
// original image namespaces and the pins.
func restoreStripped(t *testing.T, fixture string) ([]forest.NamespaceMounts, map[uint32]string) {
	t.Helper()
	input, paths, _ := restoreAs(t, fixture, nil)
	return input, paths
}

// restoreReduced restores only the mounts restore.Reduce leaves to CRIU
// (as if no record named a mount), without sharing, as CRIU does after a
// reducing pre-restore; it also returns the kept set.
func restoreReduced(t *testing.T, fixture string) ([]forest.NamespaceMounts, map[uint32]string, map[restore.MountRef]string) {
	t.Helper()
	_, red := reduceFixture(t, fixture)
	if red.Dropped == 0 {
		t.Fatalf("%s: Reduce leaves every mount to CRIU", fixture)
	}
	return restoreAs(t, fixture, red.Kept)
}

// reduceFixture is a fixture's images and what restore.Reduce leaves of
// them to CRIU when no record names a mount.
func reduceFixture(t *testing.T, fixture string) (*images.Dir, restore.Reduction) {
	t.Helper()
	d := openDir(t, filepath.Join(fixtures, fixture, "images"))
	f, err := forest.FromImages(d)
	if err != nil {
		t.Fatal(err)
	}
	rootNS, _, _ := d.RootMountNamespace()
	return d, restore.Reduce(f, rootNS, nil, nil)
}

// reducedInput is what restoreReduced restores from, without restoring.
func reducedInput(t *testing.T, fixture string) ([]forest.NamespaceMounts, *images.Dir, map[restore.MountRef]string) {
	t.Helper()
	d, red := reduceFixture(t, fixture)
	input, err := forest.ImageNamespaces(d)
	if err != nil {
		t.Fatal(err)
	}
	return input, d, red.Kept
}

func restoreAs(t *testing.T, fixture string, kept map[restore.MountRef]string) ([]forest.NamespaceMounts, map[uint32]string, map[restore.MountRef]string) {
	t.Helper()
	return restoreDirAs(t, filepath.Join(fixtures, fixture, "images"), kept)
}

func restoreDirAs(t *testing.T, dir string, kept map[restore.MountRef]string) ([]forest.NamespaceMounts, map[uint32]string, map[restore.MountRef]string) {
	t.Helper()
	d := openDir(t, dir)
	input, err := forest.ImageNamespaces(d)
	if err != nil {
		t.Fatal(err)
	}
	stripped := forest.WithoutSharing(input)
	if kept != nil {
		for i := range stripped {
			var ms []forest.Mount
			for _, m := range stripped[i].Mounts {
				if _, ok := kept[restore.MountRef{NS: stripped[i].ID, Mount: m.ID}]; ok {
					ms = append(ms, m)
				}
			}
			stripped[i].Mounts = ms
		}
	}
	f, err := forest.Build(stripped)
	if err != nil {
		t.Fatal(err)
	}
	in, err := restore.LoadInput(d)
	if err != nil {
		t.Fatal(err)
	}
	in.Forest, in.Auto = f, true
	plan, err := restore.NewPlan(in)
	if err != nil {
		t.Fatal(err)
	}
	scratch := t.TempDir()
	root, pins := filepath.Join(scratch, "root"), filepath.Join(scratch, "pins")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("ctroot", root, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(root, unix.MNT_DETACH) })
	if _, err := restore.Apply(plan, restore.Options{Root: root, PinDir: pins, Images: d}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = restore.Release(pins) })
	paths := map[uint32]string{}
	for _, ns := range input {
		paths[ns.ID] = filepath.Join(pins, restore.PinName(ns.ID))
	}
	return input, paths, kept
}

func mountTable(t *testing.T, paths map[uint32]string) string {
	t.Helper()
	var b strings.Builder
	for id, p := range paths {
		nm, err := forest.ReadNamespaceFile(p, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range nm.Mounts {
			b.WriteString(m.Mountpoint + " " + m.Root + "\n")
		}
	}
	return b.String()
}

// Post-restore's sharing phase on trees restored all private: every
// fixture comes back identical to its images (stacked mounts are reached
// by peeling, namespaces share groups).
func TestApplyLiveFixtures(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	for _, fixture := range []string{"01-seed-reverse-order", "02-peers-no-common-root", "03-slaves-of-subdirs",
		"05-overmounts", "06-nested-mntns-peers", "07-propagation-storm"} {
		t.Run(fixture, func(t *testing.T) {
			input, paths := restoreStripped(t, fixture)
			rep, err := restore.ApplyLive(input, paths, restore.LiveOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Namespaces != len(input) || rep.Mounts == 0 || len(rep.Differences) > 0 {
				t.Errorf("report %+v", rep)
			}
		})
	}
}

// Reduce and complete: CRIU restored only the mounts it must (namespace
// roots, proc, and what they need); post-restore makes the rest, tmpfs
// content included, and the sharing of all: every fixture comes back
// identical to its images.
func TestApplyLiveReduced(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	for _, fixture := range []string{"01-seed-reverse-order", "02-peers-no-common-root", "03-slaves-of-subdirs",
		"04-content-ro-file-unbindable", "05-overmounts", "06-nested-mntns-peers", "07-propagation-storm"} {
		// Ahead: prepared before the restored namespaces exist, as the
		// resident hook does while CRIU restores the tasks; advanced:
		// then begun in them before post-restore, as at CRIU's
		// post-setup-namespaces.
		for _, mode := range []string{"now", "ahead", "advanced"} {
			ahead := mode != "now"
			t.Run(fixture+"/"+mode, func(t *testing.T) {
				d := openDir(t, filepath.Join(fixtures, fixture, "images"))
				var (
					p   *restore.PreparedLive
					err error
				)
				if ahead {
					// The images only: nothing restored yet.
					input, _, kept := reducedInput(t, fixture)
					if p, err = restore.PrepareLive(input, restore.LiveOptions{Kept: kept, Images: d}); err != nil {
						t.Fatal(err)
					}
					defer p.Close()
					if p.EarlySteps == 0 {
						t.Error("no step ran ahead")
					}
				}
				input, paths, kept := restoreReduced(t, fixture)
				var rep *restore.LiveResult
				if mode == "advanced" {
					p.Advance(paths, nil)
				}
				if ahead {
					rep, err = p.Finish(paths)
				} else {
					rep, err = restore.ApplyLive(input, paths, restore.LiveOptions{Kept: kept, Images: d})
				}
				checkIdentical(t, rep, err)
				if rep.Created == 0 || rep.Created+len(kept) != rep.Mounts {
					t.Errorf("made %d mounts, %d kept, of %d", rep.Created, len(kept), rep.Mounts)
				}
				if advanced := rep.AdvancedSteps > 0; advanced != (mode == "advanced") {
					t.Errorf("%d steps advanced", rep.AdvancedSteps)
				}
			})
		}
	}
}

// A completion over one already made, or begun by a resident hook that is
// gone (post-setup-namespaces, then the action script on its own), is
// refused, naming a mount that is there already, and changes nothing.
func TestApplyLiveReducedTwice(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	const fixture = "06-nested-mntns-peers"
	d := openDir(t, filepath.Join(fixtures, fixture, "images"))
	input, paths, kept := restoreReduced(t, fixture)
	rep, err := restore.ApplyLive(input, paths, restore.LiveOptions{Kept: kept, Images: d})
	checkIdentical(t, rep, err)
	before := map[uint32]string{}
	for id, p := range paths {
		before[id] = mountsOf(t, p)
	}
	_, err = restore.ApplyLive(input, paths, restore.LiveOptions{Kept: kept, Images: d})
	if err == nil || !strings.Contains(err.Error(), "is there already") {
		t.Fatalf("second completion: %v, want a refusal naming a mount that is there already", err)
	}
	for id, p := range paths {
		if got := mountsOf(t, p); got != before[id] {
			t.Errorf("namespace %d changed:\n%s\nwas\n%s", id, got, before[id])
		}
	}
}

// mountsOf is the mount namespace at nsPath as text.
func mountsOf(t *testing.T, nsPath string) string {
	t.Helper()
	nm, err := forest.ReadNamespaceFile(nsPath, 1)
	if err != nil {
		t.Fatal(err)
	}
	f, err := forest.Build([]forest.NamespaceMounts{nm})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := forest.WriteText(&b, f); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// A completion prepared ahead and never finished (CRIU died) leaves
// nothing: no fd, no mount in this namespace.
func TestPrepareLiveClose(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	input, d, kept := reducedInput(t, "04-content-ro-file-unbindable")
	fds := testns.OpenFDs(t)
	before := mountinfoLines(t)
	p, err := restore.PrepareLive(input, restore.LiveOptions{Kept: kept, Images: d})
	if err != nil {
		t.Fatal(err)
	}
	if p.EarlySteps == 0 {
		t.Fatal("no step ran ahead")
	}
	p.Close()
	if got := testns.OpenFDs(t); got != fds {
		t.Errorf("%d fds open, %d before", got, fds)
	}
	if got := mountinfoLines(t); got != before {
		t.Errorf("mounts changed:\n%s\nwas\n%s", got, before)
	}
}

// mountinfoLines is this thread's mountinfo without mount ids' recycling
// noise: the lines as they are.
func mountinfoLines(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/thread-self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Any failing syscall of post-restore gives an error naming the step, and
// the tree keeps its mounts (CRIU then aborts the restore).
func TestApplyLiveFailure(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	for n := 1; ; n++ {
		input, paths := restoreStripped(t, "01-seed-reverse-order")
		before := mountTable(t, paths)
		fds := testns.OpenFDs(t)
		_, err := restore.ApplyLive(input, paths, restore.LiveOptions{Hooks: restore.Hooks{FailSyscall: n}})
		if err == nil {
			if n < 3 {
				t.Fatalf("only %d syscalls", n)
			}
			return // every syscall has failed once
		}
		var se *restore.StepError
		if !errors.As(err, &se) || !errors.Is(err, restore.ErrInjected) || !strings.Contains(err.Error(), "step ") {
			t.Fatalf("syscall %d: %v, want a StepError", n, err)
		}
		if got := mountTable(t, paths); got != before {
			t.Fatalf("syscall %d: the tree changed:\n%s\nwas\n%s", n, got, before)
		}
		if got := testns.OpenFDs(t); got != fds {
			t.Fatalf("syscall %d: %d fds open, %d before", n, got, fds)
		}
	}
}

// Reduce and complete, failing each syscall of the completion in turn:
// every failure is a StepError, and nothing outlives the restore (CRIU
// kills the tasks, and the namespaces go with them): no mountpoint is left
// in the restore root, no fd is left open, no thread in a restored
// namespace.
func TestApplyLiveReducedFailure(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	for _, fixture := range []string{"04-content-ro-file-unbindable", "06-nested-mntns-peers"} {
		// Advanced: prepared ahead, begun in the restored namespaces
		// before post-restore (PreparedLive.Advance), finished after.
		for _, advanced := range []bool{false, true} {
			name := fixture
			if advanced {
				name += "/advanced"
			}
			t.Run(name, func(t *testing.T) {
				failEachSyscall(t, fixture, advanced)
			})
		}
	}
}

// failEachSyscall restores fixture reduced, failing its n-th syscall for
// each n until the restore passes.
func failEachSyscall(t *testing.T, fixture string, advanced bool) {
	d := openDir(t, filepath.Join(fixtures, fixture, "images"))
	for n := 1; ; n++ {
		input, paths, kept := restoreReduced(t, fixture)
		root := rootOf(t, paths)
		before := dirTree(t, root)
		var images []forest.NamespaceMounts
		if advanced {
			images, _, _ = reducedInput(t, fixture)
		}
		fds := testns.OpenFDs(t)
		opt := restore.LiveOptions{Kept: kept, Images: d, Hooks: restore.Hooks{FailSyscall: n}}
		var err error
		if advanced {
			var p *restore.PreparedLive
			// A failed early step leaves nothing either.
			if p, err = restore.PrepareLive(images, opt); err == nil {
				p.Advance(paths, nil)
				_, err = p.Finish(paths)
			}
		} else {
			_, err = restore.ApplyLive(input, paths, opt)
		}
		if err == nil {
			if n < 10 {
				t.Fatalf("only %d syscalls", n)
			}
			return
		}
		var se *restore.StepError
		if !errors.As(err, &se) || !errors.Is(err, restore.ErrInjected) {
			t.Fatalf("syscall %d: %v, want a StepError", n, err)
		}
		if got := dirTree(t, root); got != before {
			t.Fatalf("syscall %d (%v): the restore root changed:\n%s\nwas\n%s", n, err, got, before)
		}
		if got := testns.OpenFDs(t); got != fds {
			t.Fatalf("syscall %d: %d fds open, %d before", n, got, fds)
		}
	}
}

// rootOf is the restore root of pinned namespaces: restoreAs mounts it
// beside the pins.
func rootOf(t *testing.T, paths map[uint32]string) string {
	t.Helper()
	for _, p := range paths {
		return filepath.Join(filepath.Dir(filepath.Dir(p)), "root")
	}
	t.Fatal("no namespaces")
	return ""
}

// dirTree lists every entry below dir.
func dirTree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		b.WriteString(p + "\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// Reduce and complete under a read-only restored parent: CRIU made the
// root read-only, and the mountpoints of the mounts mntv2 makes under it
// are made through a moment of rw on that mount; it is read-only again
// after.
func TestApplyLiveReducedReadOnlyParent(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	dir := t.TempDir()
	img, err := images.EncodeMounts(10, []images.Mount{
		{MntID: 1, ParentMntID: 1, Mountpoint: "/", Root: "/", FSType: 5, RootDev: 30, Source: "ctroot", Flags: uint32(forest.ReadOnly | forest.Relatime)},
		{MntID: 2, ParentMntID: 1, Mountpoint: "/a", Root: "/", FSType: 5, RootDev: 31, Source: "a", Flags: uint32(forest.Relatime)},
		{MntID: 3, ParentMntID: 2, Mountpoint: "/a/b", Root: "/", FSType: 5, RootDev: 32, Source: "b", Flags: uint32(forest.Relatime)},
	})
	if err != nil {
		t.Fatal(err)
	}
	d := openDir(t, dir)
	if err := d.WriteImage(img); err != nil {
		t.Fatal(err)
	}
	kept := map[restore.MountRef]string{{NS: 10, Mount: 1}: "a namespace's root"}
	for _, advanced := range []bool{false, true} {
		input, paths, _ := restoreDirAs(t, dir, kept)
		var rep *restore.LiveResult
		if advanced {
			// Begun before post-restore, the attach under the
			// read-only root waits for Finish: CRIU may be making a
			// ghost file through its own moment of rw there.
			p, perr := restore.PrepareLive(input, restore.LiveOptions{Kept: kept, Images: d})
			if perr != nil {
				t.Fatal(perr)
			}
			p.Advance(paths, nil)
			rep, err = p.Finish(paths)
		} else {
			rep, err = restore.ApplyLive(input, paths, restore.LiveOptions{Kept: kept, Images: d})
		}
		checkIdentical(t, rep, err)
		if rep.Created != 2 {
			t.Errorf("made %d mounts, want 2", rep.Created)
		}
		if advanced && rep.AdvancedSteps > 1 {
			t.Errorf("%d steps advanced: only the restored root's opening may be", rep.AdvancedSteps)
		}
	}
}

// checkIdentical fails the test unless a live restore succeeded and
// verified identical.
func checkIdentical(t *testing.T, rep *restore.LiveResult, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	for _, diff := range rep.Differences {
		t.Error(diff)
	}
}
