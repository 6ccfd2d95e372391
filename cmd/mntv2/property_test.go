package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/testns"
	"github.com/mntv2/mntv2/restore"
	"golang.org/x/sys/unix"
)

var (
	seedFlag    = flag.Uint64("seed", 20261125, "seed of the random mount forests (TestPropertyRandomForests)")
	forestsFlag = flag.Int("forests", 500, "number of random mount forests (TestPropertyRandomForests)")
)

// genScript makes a random container script: tmpfs superblocks with
// subdirectories and a file, binds of them and of their subdirectories and
// files, nesting, stacking, peers, slaves, slave-and-shared, unbindable,
// per-mount flags, sources unmounted after binding (groups with no common
// root), and one to three namespaces whose later mounts propagate.
func genScript(r *rand.Rand) ctScript {
	var s ctScript
	var mounts []string // mount paths, some may be gone or covered
	var dirs []string   // directories known to exist inside mounts
	nsb := 1 + r.IntN(3)
	for i := range nsb {
		p := fmt.Sprintf("/s%d", i)
		s.Ops = append(s.Ops, ctOp{Op: "tmpfs", Path: p, Name: fmt.Sprintf("sb%d", i)},
			ctOp{Op: "mkdir", Path: p + "/a/deep"}, ctOp{Op: "mkdir", Path: p + "/b"}, ctOp{Op: "mkdir", Path: p + "/c"},
			ctOp{Op: "file", Path: p + "/f"})
		mounts = append(mounts, p)
		dirs = append(dirs, p+"/a", p+"/b", p+"/c", p+"/a/deep")
	}
	pick := func(xs []string) string { return xs[r.IntN(len(xs))] }
	next := 0
	target := func() string {
		next++
		if r.IntN(3) == 0 && len(dirs) > 0 {
			return fmt.Sprintf("%s/m%d", pick(dirs), next) // nested inside a mount
		}
		return fmt.Sprintf("/m%d", next)
	}
	ops := func(n int, allowUmount bool) []ctOp {
		var out []ctOp
		for range n {
			switch k := r.IntN(20); {
			case k < 5: // bind of a mount
				t := target()
				out = append(out, ctOp{Op: "mkdir", Path: t}, ctOp{Op: "bind", From: pick(mounts), Path: t})
				mounts = append(mounts, t)
				dirs = append(dirs, t+"/a", t+"/b")
			case k < 8: // bind of a subdirectory
				t := target()
				out = append(out, ctOp{Op: "mkdir", Path: t}, ctOp{Op: "bind", From: pick(dirs), Path: t})
				mounts = append(mounts, t)
			case k < 9: // bind of a file
				t := target()
				out = append(out, ctOp{Op: "file", Path: t}, ctOp{Op: "bind", From: pick(mounts) + "/f", Path: t})
			case k < 10: // stacked on an existing mount
				out = append(out, ctOp{Op: "bind", From: pick(mounts), Path: pick(mounts)})
			case k < 11: // a new tmpfs nested in a mount: propagates if shared
				t := target()
				out = append(out, ctOp{Op: "tmpfs", Path: t, Name: fmt.Sprintf("n%d", next)})
				mounts = append(mounts, t)
			case k < 14:
				out = append(out, ctOp{Op: "shared", Path: pick(mounts)})
			case k < 16:
				out = append(out, ctOp{Op: "slave", Path: pick(mounts)})
			case k < 17:
				out = append(out, ctOp{Op: "unbindable", Path: pick(mounts)})
			case k < 18:
				out = append(out, ctOp{Op: "private", Path: pick(mounts)})
			case k < 19:
				f := []uint64{unix.MS_RDONLY, unix.MS_NOSUID | unix.MS_NODEV, unix.MS_NOEXEC, unix.MS_NOATIME, unix.MS_RDONLY | unix.MS_NOSUID}[r.IntN(5)]
				out = append(out, ctOp{Op: "flags", Path: pick(mounts), Flags: f})
			default:
				if allowUmount {
					out = append(out, ctOp{Op: "umount", Path: pick(mounts)})
				}
			}
		}
		return out
	}
	s.Ops = append(s.Ops, ops(4+r.IntN(10), true)...)
	if r.IntN(3) == 0 {
		for range 1 + r.IntN(2) {
			s.Others = append(s.Others, ops(r.IntN(4), false))
		}
		// After the split, the first namespace mounts again: propagation.
		s.Ops = append(s.Ops, ops(r.IntN(3), false)...)
	}
	return s
}

// roundTrip builds the container of s, dumps it with mntv2 dump, restores
// the images and compares. It returns a description of the failure, or "".
func roundTrip(t *testing.T, s ctScript) string {
	t.Helper()
	c := startContainer(t, s)
	dir := t.TempDir()
	imgs := filepath.Join(dir, "images")
	if out, errs, code := mntv2(t, "dump", "--pid", fmt.Sprint(c.Pid), "--images", imgs, "--tmpfs-content"); code != 0 {
		return "dump: " + out + errs
	}
	d, err := images.Open(imgs)
	if err != nil {
		return err.Error()
	}
	defer d.Close()
	in, err := restore.LoadInput(d)
	if err != nil {
		return "images: " + err.Error()
	}
	// The images must describe the live tree (dump's own check).
	live := liveForest(t, d, in.Forest)
	if diffs := forest.Compare(in.Forest, live); len(diffs) > 0 {
		return "dump differs from the live tree: " + diffs[0].String()
	}
	if keep := os.Getenv("MNTV2_KEEP_IMAGES"); keep != "" {
		_ = exec.Command("cp", "-a", imgs, keep).Run() // for debugging a failure
	}
	plan, err := restore.NewPlan(in)
	if err != nil {
		return "plan: " + err.Error()
	}
	root := filepath.Join(dir, "root")
	pins := filepath.Join(dir, "pins")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("ctroot", root, "tmpfs", 0, ""); err != nil { // named as the container root: binds of it compare sources
		t.Fatal(err)
	}
	defer unix.Unmount(root, unix.MNT_DETACH)
	// The restore root is the container's root filesystem, as a container
	// manager would pass it: copy the container root's own content.
	if err := copyContainerRoot(c.Pid, root); err != nil {
		t.Fatal(err)
	}
	res, err := restore.Apply(plan, restore.Options{Root: root, PinDir: pins, Images: d})
	if err != nil {
		return "restore: " + err.Error()
	}
	defer restore.Release(pins)
	var got []forest.NamespaceMounts
	for _, ns := range res.Namespaces {
		nm, err := forest.ReadNamespaceFile(ns.Pin, ns.ID)
		if err != nil {
			return err.Error()
		}
		got = append(got, nm)
	}
	restored, err := forest.Build(got)
	if err != nil {
		return "restored tree: " + err.Error()
	}
	if diffs := forest.Compare(in.Forest, restored); len(diffs) > 0 {
		var b strings.Builder
		for _, d := range diffs {
			b.WriteString("\n  " + d.String())
		}
		return "restored tree differs:" + b.String()
	}
	return ""
}

// copyContainerRoot copies the content of pid's root mount (without its
// submounts: a private clone made in its namespace) into dir.
func copyContainerRoot(pid int, dir string) error {
	nsfd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(nsfd)
	clone := -1
	err = forest.InNamespace(nsfd, func() error {
		var err error
		clone, err = unix.OpenTree(unix.AT_FDCWD, "/", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
		return err
	})
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(clone), "container root")
	defer f.Close()
	cmd := exec.Command("cp", "-a", "/proc/self/fd/3/.", dir)
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp: %v: %s", err, out)
	}
	return nil
}

// liveForest reads the container's namespaces, found as the images say:
// pstree and ids-<pid>.img name a task of each namespace.
func liveForest(t *testing.T, d *images.Dir, want *forest.Forest) *forest.Forest {
	t.Helper()
	tasks, err := d.Tasks()
	if err != nil {
		t.Fatal(err)
	}
	pidOf := map[uint32]int{}
	for _, task := range tasks {
		ids, err := d.TaskIDs(task.Pid)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := pidOf[ids.MntNS]; !ok {
			pidOf[ids.MntNS] = int(task.Pid)
		}
	}
	var nms []forest.NamespaceMounts
	for _, ns := range want.Namespaces {
		nm, err := forest.ReadPID(pidOf[ns.ID], ns.ID)
		if err != nil {
			t.Fatal(err)
		}
		nms = append(nms, nm)
	}
	f, err := forest.Build(nms)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// minimize drops ops one at a time while the script still fails the same
// way (same stage: dump, plan, restore, differs).
func minimize(t *testing.T, s ctScript, failure string) ctScript {
	stage, _, _ := strings.Cut(failure, ":")
	for i := 0; i < len(s.Ops); {
		try := s
		try.Ops = append(append([]ctOp{}, s.Ops[:i]...), s.Ops[i+1:]...)
		if msg := roundTrip(t, try); msg != "" && strings.HasPrefix(msg, stage+":") {
			s = try
			continue
		}
		i++
	}
	return s
}

// TestPropertyRandomForests: random mount forests built live, dumped with
// mntv2 dump, restored and verified identical. -seed and -forests change
// the run; a failure prints the seed and a minimal reproducer.
func TestPropertyRandomForests(t *testing.T) {
	if !testns.Isolate(t) {
		return
	}
	n := *forestsFlag
	if testing.Short() && n > 50 {
		n = 50
	}
	before := mountinfoLines(t)
	mounts := 0
	for i := range n {
		seed := *seedFlag + uint64(i)
		s := genScript(rand.New(rand.NewPCG(seed, seed)))
		if msg := roundTrip(t, s); msg != "" {
			min := minimize(t, s, msg)
			t.Fatalf("forest %d (go test ./cmd/mntv2 -run TestPropertyRandomForests -seed=%d -forests=1): %s\n\nminimal reproducer (%s):\n%s",
				i, seed, msg, roundTrip(t, min), min.shell())
		}
		mounts += len(s.Ops)
	}
	if after := mountinfoLines(t); len(after) != len(before) {
		t.Errorf("%d mounts before, %d after", len(before), len(after))
	}
	t.Logf("%d random forests restored identical (seed %d)", n, *seedFlag)
}
