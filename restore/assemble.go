package restore

import (
	"github.com/mntv2/mntv2/forest"
)

// assemble plans the attach of every mount in its namespace, parents before
// children. Among the children of one mount, one whose mountpoint lies below
// another's is attached first, since the other covers it (a hidden mount),
// and a mount stacked on its parent's own mountpoint comes last: so children
// go in reverse mountpoint order. Each attach resolves its mountpoint from
// the parent's own root, never through another mount.
func (p *planner) assemble() {
	for _, ns := range p.in.Forest.Namespaces {
		early, late := lateMounts(attachOrder(ns)[1:], func(m *forest.Mount) bool { return p.src[m].kind == fromNew })
		for _, m := range early {
			p.attachStep(m)
		}
		for _, m := range late {
			p.overlay(m, nil)
			p.attachStep(m)
		}
	}
}

func (p *planner) attachStep(m *forest.Mount) {
	s := step(OpAttach)
	s.NS, s.Mount, s.Handle, s.Parent = m.NS.ID, m.ID, p.handle[m], p.h(m.Parent)
	s.Path = relTo(m.Mountpoint, m.Parent.Mountpoint)
	s.Persistent = m.Parent.IsRoot() || m.Parent.External != ""
	if p.in.Live != nil {
		// Mountpoints made in a restored mount of the restore root or of
		// the host outlive an aborted restore: they are removed again.
		_, kept := p.in.Live.Kept[MountRef{m.Parent.NS.ID, m.Parent.ID}]
		s.Persistent = kept && p.persistent(m.Parent)
	}
	s.Why = p.whyf("mount %s", m.Describe())
	if s.Path == "" && p.in.Live == nil {
		s.Why += ", stacked on mount " + u32(m.Parent.ID)
	}
	p.add(s)
}

// lateMounts splits mounts (in attach order) into those attached first and
// the overlays that new(m) says are made fresh, with what is mounted on
// them, attached after: an overlay's layers are looked up by path inside
// its namespace, so they must be there first. Overlays keep their attach
// order among themselves.
func lateMounts(order []*forest.Mount, fresh func(*forest.Mount) bool) (early, late []*forest.Mount) {
	isLate := map[*forest.Mount]bool{}
	for _, m := range order {
		if m.FSType == "overlay" && fresh(m) || m.Parent != nil && isLate[m.Parent] {
			isLate[m] = true
			late = append(late, m)
		} else {
			early = append(early, m)
		}
	}
	return early, late
}

// overlay plans a fresh overlay mount m, if it is one not made yet: its
// superblock, made by its namespace's thread, and a bind of it. by lists
// the mounts of each superblock (the first overlay mount of a superblock
// makes it).
func (p *planner) overlay(m *forest.Mount, by map[uint32][]*forest.Mount) {
	if m.FSType != "overlay" || p.src[m].kind != fromNew {
		return
	}
	if _, made := p.handle[m]; made {
		return
	}
	src, ok := p.source[m.Dev]
	if !ok {
		mounts := by[m.Dev]
		if len(mounts) == 0 {
			mounts = []*forest.Mount{m}
		}
		src = p.newSuperblock(mounts)
		s := &p.plan.Steps[len(p.plan.Steps)-1]
		s.NS, s.InNS = m.NS.ID, true
		s.Why += ", made inside the namespace: its layers are paths there"
	}
	p.bind(m, src, rel(m.Root), "a private bind of root "+m.Root)
}

// attachOrder lists a namespace's mounts, its root first, in the order
// they can be attached: parents before children, and among the children
// of one mount in reverse mountpoint order, so that one covering another's
// mountpoint comes after it. Applying a live plan peels a tree in the
// reverse of this order.
func attachOrder(ns *forest.Namespace) []*forest.Mount {
	order := make([]*forest.Mount, 0, len(ns.Mounts))
	stack := []*forest.Mount{ns.Root}
	for len(stack) > 0 {
		m := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		order = append(order, m)
		// Push in mountpoint order, so they pop in reverse.
		stack = append(stack, m.Children...)
	}
	return order
}
