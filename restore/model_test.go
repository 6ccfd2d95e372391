package restore

import (
	"fmt"
	"path"
	"reflect"
	"strings"
	"testing"

	"github.com/mntv2/mntv2/forest"
)

// model is an abstract kernel that runs a plan: which handles exist, where
// they are attached, and their peer groups and masters. It checks every
// step's preconditions as the kernel would and what the plan promises
// (parents before children, hidden mounts before the mounts that cover
// them, master before slave, private targets for set-group, nothing used
// after it is dropped).
type model struct {
	t      *testing.T
	plan   *Plan
	h      []mstate
	nextG  int
	groups map[int]int // group -> live members
	index  int         // the step being run
}

type mstate struct {
	created, attached, dropped, unbindable, flagsSet bool
	sb                                               string // superblock identity
	root                                             string // root inside the superblock
	group, master                                    int
	attachedAt                                       int
}

func (m *model) fail(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf("step %d (%s): %s", m.index, m.plan.Steps[m.index], fmt.Sprintf(format, args...))
}

func (m *model) live(h Handle) *mstate {
	m.t.Helper()
	if h < 0 || int(h) >= len(m.h) || !m.h[h].created {
		m.fail("handle h%d does not exist yet", h)
	}
	if m.h[h].dropped {
		m.fail("handle h%d is used after its drop", h)
	}
	return &m.h[h]
}

func (m *model) newGroup() int {
	m.nextG++
	return m.nextG
}

func runModel(t *testing.T, plan *Plan) *model {
	t.Helper()
	m := &model{t: t, plan: plan, h: make([]mstate, len(plan.Handles)), groups: map[int]int{}}
	sharingDone, flagsStarted := false, false
	for i, s := range plan.Steps {
		m.index = i
		switch s.Op {
		case OpSetGroup, OpMakeShared, OpMakeSlave:
			if flagsStarted {
				m.fail("sharing after unbindable or flags")
			}
		case OpMakeUnbindable, OpSetFlags:
			flagsStarted, sharingDone = true, true
		}
		_ = sharingDone
		switch s.Op {
		case OpCreateNamespace:
			if s.From == NoHandle {
				m.h[s.Handle] = mstate{created: true, attached: true, sb: "root", root: "/"}
				break
			}
			// Entered with the mount made for it: a detached, private one.
			if s.From != s.Handle {
				m.fail("a namespace entered with h%d is not its root's handle h%d", s.From, s.Handle)
			}
			st := m.live(s.From)
			if st.attached || st.group != 0 || st.master != 0 {
				m.fail("a namespace's root must be a detached private mount")
			}
			st.attached = true
		case OpNewSuperblock:
			m.h[s.Handle] = mstate{created: true, sb: fmt.Sprintf("dev%d", s.Dev), root: "/"}
		case OpOpenExternal:
			m.h[s.Handle] = mstate{created: true, sb: "ext:" + s.Path, root: "/"}
		case OpOpenHost:
			// A host mount in a host group (the applier checks it is in
			// one), not a clone.
			g := m.newGroup()
			m.groups[g]++
			m.h[s.Handle] = mstate{created: true, attached: true, sb: "ext:" + s.Path, root: "/", group: g}
		case OpFillTmpfs:
			if st := m.live(s.Handle); st.attached {
				m.fail("fill of an attached mount")
			}
		case OpBind:
			from := m.live(s.From)
			if from.unbindable {
				m.fail("bind from an unbindable mount")
			}
			// As clone_mnt: a clone of a shared mount is its peer, and a
			// clone of a slave has the same master.
			m.h[s.Handle] = mstate{created: true, sb: from.sb, root: path.Join(from.root, s.Path),
				group: from.group, master: from.master}
			if from.group != 0 {
				m.groups[from.group]++
			}
		case OpAttach:
			st, parent := m.live(s.Handle), m.live(s.Parent)
			if st.attached {
				m.fail("attached twice")
			}
			if !parent.attached {
				m.fail("parent h%d is not attached yet", s.Parent)
			}
			if parent.group != 0 {
				m.fail("attach under a shared mount: it would propagate to the parent's peers")
			}
			st.attached, st.attachedAt = true, i
		case OpSetGroup:
			from, to := m.live(s.From), m.live(s.Handle)
			// The restore root and host paths of external mounts are the
			// host's filesystems: whether two of them are one superblock
			// is known only when restoring (the kernel refuses otherwise,
			// and the restore rolls back naming the mount).
			hostSide := func(sb string) bool {
				return sb == "root" || strings.HasPrefix(sb, "ext:") || strings.HasPrefix(sb, "host:")
			}
			if from.sb != to.sb && !(hostSide(from.sb) && hostSide(to.sb)) {
				m.fail("set-group across superblocks %s and %s", from.sb, to.sb)
			}
			if !(from.root == "/" || to.root == from.root || strings.HasPrefix(to.root, from.root+"/")) {
				m.fail("set-group from root %s onto root %s: the source root must contain the target's", from.root, to.root)
			}
			if to.group != 0 || to.master != 0 {
				m.fail("set-group onto a mount that is not private (EBUSY)")
			}
			if from.group == 0 && from.master == 0 {
				m.fail("set-group from a private mount copies nothing")
			}
			to.master = from.master
			if from.group != 0 {
				to.group = from.group
				m.groups[from.group]++
			}
		case OpMakeShared:
			st := m.live(s.Handle)
			if st.group == 0 {
				st.group = m.newGroup()
				m.groups[st.group]++
			}
		case OpMakeSlave:
			st := m.live(s.Handle)
			if st.group != 0 {
				if m.groups[st.group] > 1 {
					st.master = st.group
				}
				m.groups[st.group]--
				st.group = 0
			}
			if st.master == 0 {
				m.fail("make-slave of a mount with no peers and no master leaves it private")
			}
		case OpRemoveDeleted:
			m.live(s.From)
		case OpMakeUnbindable:
			st := m.live(s.Handle)
			st.unbindable = true
		case OpSetFlags:
			m.live(s.Handle).flagsSet = true
		case OpDrop:
			st := m.live(s.Handle)
			if st.group != 0 {
				m.groups[st.group]--
			}
			st.dropped = true
		case OpPin:
			if !m.live(s.Handle).attached {
				m.fail("pin of a namespace that is not assembled")
			}
			for j := i + 1; j < len(plan.Steps); j++ {
				if plan.Steps[j].Op != OpPin {
					m.fail("a %s step after the pins", plan.Steps[j].Op)
				}
			}
		default:
			m.fail("unknown op")
		}
	}
	for h, info := range plan.Handles {
		st := m.h[h]
		if !st.created {
			t.Errorf("handle h%d (%s) is never created", h, info.What)
		}
		if info.Mount == 0 && !st.dropped {
			t.Errorf("handle h%d (%s) is no mount of the result and is never dropped", h, info.What)
		}
		if info.Mount != 0 && (st.dropped || !st.attached) {
			t.Errorf("handle h%d (mount %d) is not in the result", h, info.Mount)
		}
	}
	return m
}

// checkResult compares what the model built with the forest: every mount
// attached once under its parent's handle, hidden mounts before the mounts
// that cover them, and the same peer groups and masters up to renaming.
func checkResult(t *testing.T, f *forest.Forest, plan *Plan, m *model) {
	t.Helper()
	handle := map[[2]uint32]Handle{}
	for h, info := range plan.Handles {
		if info.Mount != 0 {
			handle[[2]uint32{info.NS, info.Mount}] = Handle(h)
		}
	}
	attaches := map[Handle]Step{}
	for _, s := range plan.Steps {
		if s.Op == OpAttach {
			attaches[s.Handle] = s
		}
	}
	toModel, toImage := map[uint32]int{}, map[int]uint32{}
	same := func(img uint32, got int, what string, mt *forest.Mount) {
		if img == 0 && got == 0 {
			return
		}
		if img == 0 || got == 0 {
			t.Errorf("namespace %d, %s: %s: image %d, restored %d", mt.NS.ID, mt.Describe(), what, img, got)
			return
		}
		if g, ok := toModel[img]; ok && g != got || toImage[got] != 0 && toImage[got] != img {
			t.Errorf("namespace %d, %s: %s: image group %d maps to two restored groups or back", mt.NS.ID, mt.Describe(), what, img)
		}
		toModel[img], toImage[got] = got, img
	}
	for _, ns := range f.Namespaces {
		_ = ns.Walk(func(mt *forest.Mount) error {
			h, ok := handle[[2]uint32{ns.ID, mt.ID}]
			if !ok {
				t.Errorf("namespace %d, mount %d has no handle", ns.ID, mt.ID)
				return nil
			}
			if mt.IsRoot() {
				return nil
			}
			a, ok := attaches[h]
			if !ok {
				t.Errorf("namespace %d, %s is never attached", ns.ID, mt.Describe())
				return nil
			}
			if ph := handle[[2]uint32{ns.ID, mt.Parent.ID}]; a.Parent != ph {
				t.Errorf("namespace %d, %s attached under h%d, want its parent h%d", ns.ID, mt.Describe(), a.Parent, ph)
			}
			st := m.h[h]
			same(mt.PeerGroup, st.group, "peer group", mt)
			if mt.Master != 0 && len(f.Groups()) > 0 && hasMembers(f, mt.Master) {
				same(mt.Master, st.master, "master", mt)
			}
			if mt.Unbindable != st.unbindable {
				t.Errorf("namespace %d, %s: unbindable %v, restored %v", ns.ID, mt.Describe(), mt.Unbindable, st.unbindable)
			}
			// A sibling below this mount's mountpoint is covered by it, so
			// it must be attached first.
			for _, sib := range mt.Parent.Children {
				if sib != mt && strings.HasPrefix(sib.Mountpoint, strings.TrimSuffix(mt.Mountpoint, "/")+"/") {
					if m.h[handle[[2]uint32{ns.ID, sib.ID}]].attachedAt > st.attachedAt {
						t.Errorf("namespace %d: %s is attached after %s, which covers it", ns.ID, sib.Describe(), mt.Describe())
					}
				}
			}
			return nil
		})
	}
}

func hasMembers(f *forest.Forest, group uint32) bool {
	for _, g := range f.Groups() {
		if g.ID == group {
			return len(g.Members) > 0
		}
	}
	return false
}

func planAndCheck(t *testing.T, in Input) *Plan {
	t.Helper()
	plan, err := NewPlan(in)
	if err != nil {
		t.Fatal(err)
	}
	m := runModel(t, plan)
	checkResult(t, in.Forest, plan, m)
	again, err := NewPlan(in)
	if err != nil || !reflect.DeepEqual(plan, again) {
		t.Errorf("planning twice gives different plans (%v)", err)
	}
	return plan
}

// forestOf builds a one-namespace forest on a tmpfs root; mounts are
// "id parent mountpoint root dev shared master" lines.
func forestOf(t *testing.T, lines ...string) *forest.Forest {
	t.Helper()
	nm := forest.NamespaceMounts{ID: 1, Mounts: []forest.Mount{{ID: 1, ParentID: 1, Mountpoint: "/", Root: "/", FSType: "tmpfs", Dev: 1, Flags: forest.Relatime}}}
	for _, l := range lines {
		var m forest.Mount
		if _, err := fmt.Sscan(l, &m.ID, &m.ParentID, &m.Mountpoint, &m.Root, &m.Dev, &m.PeerGroup, &m.Master); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		m.FSType, m.Source, m.Flags = "tmpfs", "t", forest.Relatime
		nm.Mounts = append(nm.Mounts, m)
	}
	f, err := forest.Build([]forest.NamespaceMounts{nm})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func planText(p *Plan) string {
	var b strings.Builder
	for i, s := range p.Steps {
		fmt.Fprintf(&b, "%3d %s\n", i, s)
	}
	return b.String()
}
