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

// External masters: a live plan joins the host's group when it is there,
// and says which mount cannot be restored when it is not.
func TestLivePlanHostMaster(t *testing.T) {
	f := forestOf(t, "10 1 /e /x 2 0 77")
	plan, err := NewLivePlan(Input{Forest: f, Live: &LiveInput{HostGroups: map[uint32]string{77: "/host/shared"}}})
	if err != nil {
		t.Fatal(err)
	}
	checkLivePlan(t, f, plan)
	_, err = NewLivePlan(Input{Forest: f, Live: &LiveInput{}})
	if err == nil || !strings.Contains(err.Error(), "mount 10 (/e)") {
		t.Errorf("missing host group: %v", err)
	}
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
