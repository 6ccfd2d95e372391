package restore

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mntv2/mntv2/forest"
)

// checkLivePlan checks a live plan's handle discipline: every handle is
// opened (or made) before use and dropped at the end; every mount with
// sharing is the target of a set-group or its group's representative.
func checkLivePlan(t *testing.T, f *forest.Forest, plan *Plan) {
	t.Helper()
	open := map[Handle]bool{}
	shared := map[[2]uint32]bool{}
	for i, s := range plan.Steps {
		need := func(h Handle) {
			if h != NoHandle && !open[h] {
				t.Errorf("step %d (%s) uses h%d before it is opened", i, s, h)
			}
		}
		switch s.Op {
		case OpOpenLive, OpOpenHost:
			open[s.Handle] = true
		case OpBind:
			need(s.From)
			open[s.Handle] = true
		case OpUnstack, OpMakeShared, OpMakeSlave, OpMakeUnbindable:
			need(s.Handle)
			if s.Op == OpMakeShared && s.Mount != 0 {
				shared[[2]uint32{s.NS, s.Mount}] = true
			}
		case OpSetGroup:
			need(s.From)
			need(s.Handle)
			shared[[2]uint32{s.NS, s.Mount}] = true
		case OpDrop:
			need(s.Handle)
			delete(open, s.Handle)
		default:
			t.Errorf("step %d: a live plan creates nothing: %s", i, s)
		}
	}
	if len(open) > 0 {
		t.Errorf("%d handles never dropped", len(open))
	}
	for _, ns := range f.Namespaces {
		for _, m := range ns.Mounts {
			if (m.PeerGroup != 0 || m.Master != 0) && !shared[[2]uint32{ns.ID, m.ID}] {
				t.Errorf("namespace %d mount %d (%s): no step gives it its sharing", ns.ID, m.ID, m.Mountpoint)
			}
		}
	}
}

func TestLivePlanFixtures(t *testing.T) {
	dirs, _ := filepath.Glob(filepath.Join(fixtures, "0*"))
	for _, dir := range dirs {
		name := filepath.Base(dir)
		t.Run(name, func(t *testing.T) {
			_, in := loadFixture(t, name)
			helpers, err := LiveHelpers(in.Forest)
			if err != nil || len(helpers) != 0 {
				t.Fatalf("LiveHelpers = %v, %v: every fixture has a mount exposing what its groups need", helpers, err)
			}
			plan, err := NewLivePlan(Input{Forest: in.Forest})
			if err != nil {
				t.Fatal(err)
			}
			checkLivePlan(t, in.Forest, plan)
		})
	}
}

// Peers /x and /y of one superblock, and no mount of its root: the live
// restore needs a helper mount in the images, stacked on a leaf member.
func TestLiveHelpersAdded(t *testing.T) {
	f := forestOf(t, "10 1 /a /x 2 1 0", "11 1 /b /y 2 1 0")
	helpers, err := LiveHelpers(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(helpers) != 1 {
		t.Fatalf("%d helpers, want 1", len(helpers))
	}
	h := helpers[0].Mount
	if h.Root != "/" || h.ID != 12 || (h.ParentID != 10 || h.Mountpoint != "/a") && (h.ParentID != 11 || h.Mountpoint != "/b") || h.Dev != 2 || h.PeerGroup != 0 {
		t.Fatalf("helper %+v: want a private bind of / stacked on /a or /b", h)
	}
	// The live plan of the images plus the helper: the helper is unstacked
	// first, then both peers copy from it (directly or from a bind of it).
	nm := forest.NamespaceMounts{ID: 1}
	for _, m := range f.Namespaces[0].Mounts {
		c := *m
		c.Parent, c.Children, c.NS = nil, nil, nil
		nm.Mounts = append(nm.Mounts, c)
	}
	nm.Mounts = append(nm.Mounts, h)
	withHelper, err := forest.Build([]forest.NamespaceMounts{nm})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := NewLivePlan(Input{Forest: withHelper, Live: &LiveInput{Helpers: map[MountRef]bool{{NS: 1, Mount: 12}: true}}})
	if err != nil {
		t.Fatal(err)
	}
	checkLivePlan(t, f, plan)
	first := slices.IndexFunc(plan.Steps, func(s Step) bool { return s.Op != OpOpenLive })
	if plan.Steps[first].Op != OpUnstack || plan.Helpers < 1 {
		t.Errorf("the helper is not unstacked first:\n%v", plan.Steps)
	}
	// With a mount of the root present, no helper is needed.
	f2 := forestOf(t, "10 1 /a /x 2 1 0", "11 1 /b /y 2 1 0", "12 1 /s / 2 0 0")
	if helpers, err := LiveHelpers(f2); err != nil || len(helpers) != 0 {
		t.Errorf("LiveHelpers with / exposed = %v, %v; want none", helpers, err)
	}
}

// External masters: a live plan joins the group of the host mount the
// external mount was bound from when it is there, and says which mount
// cannot be restored when it is not (or, lenient, restores it private).
func TestLivePlanHostMaster(t *testing.T) {
	f := externalForest(t, forest.Mount{ID: 10, ParentID: 1, Mountpoint: "/e", Root: "/x", Dev: 2, Master: 77, External: "vol", FSType: "tmpfs"})
	ref := MountRef{1, 10}
	plan, err := NewLivePlan(Input{Forest: f, Live: &LiveInput{HostPaths: map[MountRef]string{ref: "/host/shared"}}})
	if err != nil {
		t.Fatal(err)
	}
	checkLivePlan(t, f, plan)
	if text := planText(plan); !strings.Contains(text, `open-host        h0 path="/host/shared"`) || !strings.Contains(text, "make-slave") {
		t.Errorf("no host group joined:\n%s", text)
	}
	_, err = NewLivePlan(Input{Forest: f, Live: &LiveInput{NoHost: map[MountRef]string{ref: "it is gone"}}})
	if err == nil || !strings.Contains(err.Error(), "mount 10 (/e): its master, peer group 77, is not in the images: it is gone") {
		t.Errorf("missing host group: %v", err)
	}
	plan, err = NewLivePlan(Input{Forest: f, Live: &LiveInput{}, HostLenient: true})
	if err != nil || len(plan.Warnings) != 1 || strings.Contains(planText(plan), "open-host") {
		t.Errorf("lenient: %v, warnings %q", err, plan.Warnings)
	}
}

func externalForest(t *testing.T, ms ...forest.Mount) *forest.Forest {
	t.Helper()
	all := append([]forest.Mount{{ID: 1, ParentID: 1, Mountpoint: "/", Root: "/", FSType: "tmpfs", Dev: 1}}, ms...)
	f, err := forest.Build([]forest.NamespaceMounts{{ID: 1, Mounts: all}})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// The host side of an external mount is the host mount it was bound from,
// found by superblock, root and the source path the images record, never
// by the peer group number the images hold: a decoy that took that
// number over is never joined.
func TestHostPathsByIdentity(t *testing.T) {
	ext := forest.Mount{ID: 10, ParentID: 1, Mountpoint: "/mnt/ext", Root: "/", Dev: 50, PeerGroup: 5,
		External: "CRIU:AUTOGENERATED", Source: "/w/hostshare", FSType: "tmpfs"}
	hostRoot := forest.Mount{ID: 100, ParentID: 99, Mountpoint: "/", Root: "/", Dev: 8, FSType: "ext4"}
	decoy := forest.Mount{ID: 102, ParentID: 100, Mountpoint: "/w/decoy", Root: "/", Dev: 60, PeerGroup: 5, FSType: "tmpfs"}
	ref := MountRef{1, 10}
	cases := []struct {
		name      string
		ext       forest.Mount
		host      []forest.Mount
		path, why string
	}{
		{"the source, still shared", ext, []forest.Mount{hostRoot,
			{ID: 101, ParentID: 100, Mountpoint: "/w/hostshare", Root: "/", Dev: 50, PeerGroup: 9, FSType: "tmpfs"}, decoy}, "/w/hostshare", ""},
		{"the source lost its group; a decoy has the old number", ext, []forest.Mount{hostRoot,
			{ID: 101, ParentID: 100, Mountpoint: "/w/hostshare", Root: "/", Dev: 50, FSType: "tmpfs"}, decoy}, "", "is in no peer group and has no master now"},
		{"the source is another filesystem now", ext, []forest.Mount{hostRoot,
			{ID: 103, ParentID: 100, Mountpoint: "/w/hostshare", Root: "/", Dev: 70, PeerGroup: 5, FSType: "tmpfs"}, decoy}, "", "is not the one it was bound from"},
		{"no source path: the one host mount in a group on its superblock", withKey(ext, "vol"), []forest.Mount{hostRoot,
			{ID: 101, ParentID: 100, Mountpoint: "/a", Root: "/", Dev: 50, PeerGroup: 9},
			{ID: 104, ParentID: 100, Mountpoint: "/b", Root: "/sub", Dev: 50}, decoy}, "/a", ""},
		{"no source path, two groups: ambiguous", withKey(ext, "vol"), []forest.Mount{hostRoot,
			{ID: 101, ParentID: 100, Mountpoint: "/a", Root: "/", Dev: 50, PeerGroup: 9},
			{ID: 104, ParentID: 100, Mountpoint: "/b", Root: "/", Dev: 50, PeerGroup: 11}, decoy}, "", "different groups (/a, /b)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := externalForest(t, c.ext)
			// CRIU restored it: the live mount is a clone of the host's.
			restored := c.ext
			live := map[uint32]*LiveNamespace{1: {Mounts: map[uint32]*forest.Mount{10: &restored}}}
			paths, why, _ := HostPaths(f, 1, live, c.host)
			if paths[ref] != c.path || !strings.Contains(why[ref], c.why) || (c.why == "") != (why[ref] == "") {
				t.Errorf("path %q, why %q; want %q, %q", paths[ref], why[ref], c.path, c.why)
			}
			if paths[ref] == decoy.Mountpoint {
				t.Errorf("joined the decoy")
			}
		})
	}
	// Not restored by CRIU (reduce mode): mntv2 clones it from the host
	// mount its source lies on, which must still be of its filesystem and
	// in a group.
	for _, c := range []struct {
		name      string
		on        forest.Mount
		path, why string
	}{
		{"made by mntv2: the host share", forest.Mount{ID: 101, ParentID: 100, Mountpoint: "/w/hostshare", Root: "/", Dev: 99, PeerGroup: 9, FSType: "tmpfs"}, "/w/hostshare", ""},
		{"made by mntv2: the share is gone, the directory is there", forest.Mount{ID: 100, ParentID: 99, Mountpoint: "/", Root: "/", Dev: 8, PeerGroup: 2, FSType: "ext4"}, "", "is gone: a ext4 filesystem is there now, the images say tmpfs"},
		{"made by mntv2: the share is private", forest.Mount{ID: 101, ParentID: 100, Mountpoint: "/w/hostshare", Root: "/", Dev: 99, FSType: "tmpfs"}, "", "is in no peer group"},
	} {
		t.Run(c.name, func(t *testing.T) {
			paths, why, _ := HostPaths(externalForest(t, ext), 1, nil, []forest.Mount{hostRoot, c.on, decoy})
			if paths[ref] != c.path || !strings.Contains(why[ref], c.why) || (c.why == "") != (why[ref] == "") {
				t.Errorf("path %q, why %q; want %q, %q", paths[ref], why[ref], c.path, c.why)
			}
		})
	}
}

func withKey(m forest.Mount, key string) forest.Mount {
	m.External, m.Source = key, "none"
	return m
}

// A 100,000-deep chain of stacked mounts plans (full and live) without
// recursion limits and in linear time.
func TestPlanDeepChain(t *testing.T) {
	const n = 100000
	ms := make([]forest.Mount, n)
	for i := range ms {
		ms[i] = forest.Mount{ID: uint32(i + 1), ParentID: uint32(i), Mountpoint: "/", Root: "/", FSType: "tmpfs", Source: "t",
			Dev: 2, Flags: forest.Relatime, PeerGroup: uint32(i % 2)}
	}
	ms[0].Dev = 1
	f, err := forest.Build([]forest.NamespaceMounts{{ID: 1, Mounts: ms}})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := NewPlan(Input{Forest: f})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(plan.Steps); got < 2*(n-1) {
		t.Errorf("%d steps for %d mounts", got, n)
	}
	live, err := NewLivePlan(Input{Forest: f})
	if err != nil {
		t.Fatal(err)
	}
	checkLivePlan(t, f, live)
}

// In a completion, a group whose members are all made by mntv2 from one new
// superblock, with nothing under them, is born peers as in a standalone
// restore, and its representative is made shared before the restored
// namespaces exist (early); a group with a member CRIU restored, or a
// member with a child, is copied into with MOVE_MOUNT_SET_GROUP after the
// attaches, and here nothing of it is shared early (its representative's
// attach, under the restored root, waits for the restored namespace).
func TestLivePlanBornPeers(t *testing.T) {
	cases := []struct {
		name            string
		mounts          []string
		kept            []uint32
		setGroups, born int
	}{
		{"every member made: born", []string{
			"10 1 /d / 2 0 0",
			"11 10 /d/a / 3 7 0",
			"12 10 /d/b / 3 7 0",
			"13 1 /c / 3 7 0",
		}, nil, 0, 2},
		{"a member restored by CRIU: copied", []string{
			"10 1 /a / 3 7 0",
			"11 1 /b / 3 7 0",
			"12 1 /c / 3 7 0",
		}, []uint32{11}, 2, 0},
		{"a member with a child: copied", []string{
			"10 1 /a / 3 7 0",
			"11 1 /b / 3 7 0",
			"12 10 /a/x / 4 0 0",
		}, nil, 1, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := forestOf(t, c.mounts...)
			kept := map[MountRef]string{{NS: 1, Mount: 1}: "root"}
			for _, id := range c.kept {
				kept[MountRef{NS: 1, Mount: id}] = "test"
			}
			plan, err := NewLivePlan(Input{Forest: f, Live: &LiveInput{Kept: kept}, Auto: true})
			if err != nil {
				t.Fatal(err)
			}
			setGroups, born, sharedEarly := 0, 0, 0
			early := (&applier{plan: plan}).earlySteps()
			for i, s := range plan.Steps {
				switch {
				case s.Op == OpSetGroup:
					setGroups++
				case s.Op == OpBind && strings.Contains(s.Why, "from birth"):
					born++
					if !early[i] {
						t.Errorf("step %d (%s) waits for the restored namespace", i, s)
					}
				case s.Op == OpMakeShared && early[i]:
					sharedEarly++
				}
			}
			if setGroups != c.setGroups || born != c.born {
				t.Errorf("%d set-group steps and %d members born peers, want %d and %d:\n%s",
					setGroups, born, c.setGroups, c.born, planText(plan))
			}
			if want := min(c.born, 1); sharedEarly != want {
				t.Errorf("%d groups made shared early, want %d:\n%s", sharedEarly, want, planText(plan))
			}
		})
	}
}

// At post-setup-namespaces (Early.Advance) a completion opens the restored
// mounts and attaches under them what it made itself, but clones nothing
// of a restored mount (CRIU still restores the files there), and an attach
// left for later holds back only the attaches under the same parent whose
// mountpoint contains it or lies in it.
func TestAdvanceSteps(t *testing.T) {
	f := forestOf(t,
		"10 1 /usr /usr 2 0 0", // restored: an external bind, say
		"11 1 /bin /usr/bin 2 0 0",
		"12 1 /bin/x / 4 0 0",
		"13 1 /mnt/a / 3 7 0",
		"14 1 /mnt/b / 3 7 0",
		"15 1 /mnt/b/c / 5 0 0",
		"16 1 /srv/in /usr/srv 2 0 0",
		"17 1 /srv / 6 0 0",
	)
	kept := map[MountRef]string{{NS: 1, Mount: 1}: "root", {NS: 1, Mount: 10}: "test"}
	plan, err := NewLivePlan(Input{Forest: f, Live: &LiveInput{Kept: kept}, Auto: true})
	if err != nil {
		t.Fatal(err)
	}
	a := &applier{plan: plan}
	done := a.earlySteps()
	sel := a.advanceSteps(done, map[uint32]bool{1: true}, func(Step) bool { return false })
	ahead := map[string]bool{}
	for i, s := range plan.Steps {
		if sel[i] && s.Op == OpAttach {
			ahead[s.Path] = true
		}
		if sel[i] && s.Op == OpBind && plan.Handles[s.From].Live {
			t.Errorf("step %d (%s) clones a restored mount ahead", i, s)
		}
	}
	// /bin/x, covered by /bin, is attached first in either case; /srv,
	// which covers /srv/in, must wait for it.
	want := map[string]bool{"mnt/a": true, "mnt/b": true, "mnt/b/c": true, "bin/x": true}
	for p := range want {
		if !ahead[p] {
			t.Errorf("the attach at %s waits:\n%s", p, planText(plan))
		}
	}
	for p := range ahead {
		if !want[p] {
			t.Errorf("the attach at %s runs ahead:\n%s", p, planText(plan))
		}
	}
}
