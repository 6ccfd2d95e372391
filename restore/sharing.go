package restore

import (
	"fmt"
	"slices"
	"strings"

	"github.com/mntv2/mntv2/forest"
)

// The sharing phase copies peer groups and masters onto the private,
// assembled trees with move_mount(MOVE_MOUNT_SET_GROUP). The kernel
// (fs/namespace.c do_set_group) copies from a mount whose root contains the
// target's root, on the same superblock, onto a private target. So each
// group gets a representative whose root contains every mount that will copy
// from it: its members, its slave-only mounts and the representatives of its
// slave groups. When no member has such a root (fixture 02: peers /x and /y
// whose common shared mount is gone; fixture 03: slave-only binds of sibling
// subdirectories), the plan adds a helper: a private bind of the common
// ancestor, which joins the group first, lets the others copy from it and is
// dropped at the end. CRIU has no helpers and fails these trees.

// groupPlan is what the sharing phase knows about one peer group.
type groupPlan struct {
	*forest.Group
	master *groupPlan   // nil: no master, or a master outside the images
	slaves []*groupPlan // groups whose members are slaves of this one
	dev    uint32
	need   string // root path that contains every mount copying from this group
	rep    Handle // member or helper every other mount copies from
}

// sharing plans the peer groups and masters, master before slave.
func (p *planner) sharing() error {
	order, byID, err := p.analyzeSharing()
	if err != nil {
		return err
	}
	p.groups = byID
	return p.planGroups(order)
}

// planGroups plans the groups of order, which lists masters first.
func (p *planner) planGroups(order []*groupPlan) error {
	for _, gp := range order {
		if err := p.planGroup(gp); err != nil {
			return err
		}
	}
	return nil
}

// analyzeSharing finds each group's master and slaves and the root its
// representative needs, and returns the groups that have members, masters
// before slaves.
func (p *planner) analyzeSharing() ([]*groupPlan, map[uint32]*groupPlan, error) {
	groups := p.in.Forest.Groups()
	byID := make(map[uint32]*groupPlan, len(groups))
	for _, g := range groups {
		byID[g.ID] = &groupPlan{Group: g, rep: NoHandle}
	}
	var problems []string
	for _, g := range groups {
		gp := byID[g.ID]
		if err := groupConsistent(g); err != "" {
			problems = append(problems, err)
			continue
		}
		if len(g.Members) == 0 {
			// A master that is not in the images: the host's (external
			// masters, see hostMasters).
			continue
		}
		gp.dev = g.Members[0].Dev
		if g.Master != 0 {
			if m := byID[g.Master]; m != nil && len(m.Members) > 0 {
				gp.master = m
				m.slaves = append(m.slaves, gp)
			}
		}
	}
	if len(problems) > 0 {
		return nil, nil, &UnsupportedError{Mounts: problems}
	}
	// Roots of slave groups first (they widen their master's need), then
	// masters before slaves for the steps.
	order := topoOrder(byID, groups)
	for i := len(order) - 1; i >= 0; i-- {
		gp := order[i]
		roots := make([]string, 0, len(gp.Members)+len(gp.Slaves))
		for _, m := range gp.Members {
			roots = append(roots, m.Root)
		}
		for _, s := range gp.Slaves {
			if s.PeerGroup == 0 {
				roots = append(roots, s.Root)
			}
		}
		for _, sg := range gp.slaves {
			roots = append(roots, sg.need)
		}
		gp.need = commonAncestor(roots)
	}
	return order, byID, nil
}

// groupConsistent checks what the kernel guarantees for a real group: one
// superblock and one master for all members.
func groupConsistent(g *forest.Group) string {
	for _, m := range g.Members {
		first := g.Members[0]
		if m.Dev != first.Dev {
			return fmt.Sprintf("namespace %d, mount %d (%s): peer group %d spans superblocks %s and %s",
				m.NS.ID, m.ID, m.Mountpoint, g.ID, forest.DevString(first.Dev), forest.DevString(m.Dev))
		}
		if m.Master != first.Master {
			return fmt.Sprintf("namespace %d, mount %d (%s): peers of group %d have different masters (%d, %d)",
				m.NS.ID, m.ID, m.Mountpoint, g.ID, first.Master, m.Master)
		}
	}
	for _, s := range g.Slaves {
		if len(g.Members) > 0 && s.Dev != g.Members[0].Dev {
			return fmt.Sprintf("namespace %d, mount %d (%s): slave of group %d on another superblock (%s, master on %s)",
				s.NS.ID, s.ID, s.Mountpoint, g.ID, forest.DevString(s.Dev), forest.DevString(g.Members[0].Dev))
		}
	}
	return ""
}

// topoOrder lists the groups that have members, every master before its
// slaves (masters form no cycle: forest.Build checked).
func topoOrder(byID map[uint32]*groupPlan, groups []*forest.Group) []*groupPlan {
	order := make([]*groupPlan, 0, len(groups))
	done := make(map[*groupPlan]bool, len(groups))
	for _, g := range groups {
		gp := byID[g.ID]
		if len(gp.Members) == 0 || done[gp] {
			continue
		}
		// Climb to the first unplaced ancestor, then place the chain top down.
		var chain []*groupPlan
		for x := gp; x != nil && !done[x]; x = x.master {
			chain = append(chain, x)
			done[x] = true
		}
		slices.Reverse(chain)
		order = append(order, chain...)
	}
	return order
}

// commonAncestor is the deepest path that contains every path of roots.
func commonAncestor(roots []string) string {
	if len(roots) == 0 {
		return "/"
	}
	common := roots[0]
	for _, r := range roots[1:] {
		for !contains(common, r) {
			i := strings.LastIndexByte(common, '/')
			if i <= 0 {
				common = "/"
			} else {
				common = common[:i]
			}
		}
	}
	return common
}

// bornPeers picks the groups whose members need no MOVE_MOUNT_SET_GROUP:
// cloned from a representative made shared while everything is still
// detached, they are peers from birth (a clone of a shared mount is its
// peer). That is safe for a group with no master whose members are all
// binds of one new superblock with nothing ever mounted under them: no
// attach lands under a shared mount, so nothing propagates. The
// representative is a member with the root the group needs, so its slaves
// copy from it as from any other representative.
func (p *planner) bornPeers(order []*groupPlan) {
	for _, gp := range order {
		if gp.Master != 0 || len(gp.Members) < 2 {
			continue
		}
		var rep *forest.Mount
		ok := true
		for _, m := range gp.Members {
			if m.IsRoot() || m.Unbindable || m.Deleted || len(m.Children) > 0 || p.src[m].kind != fromNew || m.FSType == "overlay" || m.IDMap != nil {
				ok = false
				break
			}
			if rep == nil && m.Root == gp.need {
				rep = m
			}
		}
		if ok && rep != nil {
			p.born[gp.ID] = rep
		}
	}
}

// planGroup plans one group: its representative joins the master (if any)
// and becomes shared, then every member and slave-only mount copies from it.
func (p *planner) planGroup(gp *groupPlan) error {
	if rep := p.born[gp.ID]; rep != nil {
		// Peers from birth: only the slaves are left.
		gp.rep = p.h(rep)
		p.slavesOf(gp)
		return nil
	}
	var rep *forest.Mount
	for _, m := range gp.Members {
		if m.Root == gp.need && (rep == nil || !m.IsRoot() && rep.IsRoot()) {
			rep = m
		}
	}
	if ext := p.hostPeers(gp); ext != nil {
		// External sharing: the members are peers of the host group of
		// the mount ext is bound from.
		host, why := p.hostAnchor(ext, false)
		if host != NoHandle {
			gp.rep = host
			for _, m := range gp.Members {
				p.setGroup(gp.rep, p.h(m), m, p.whyf("peer of the host mount's group (shared:%d when dumped)", gp.ID))
			}
			p.slavesOf(gp)
			return nil
		}
		if err := p.noHost(ext, fmt.Sprintf("peer group %d was the host's", gp.ID), why); err != nil {
			return err
		}
	}
	if rep != nil {
		gp.rep = p.h(rep)
	} else {
		h, err := p.helper(gp)
		if err != nil {
			return err
		}
		gp.rep = h
	}
	if gp.master != nil {
		p.setGroup(gp.master.rep, gp.rep, rep, p.whyf("join master group %d, to become its slave", gp.master.ID))
		p.propagation(OpMakeSlave, gp.rep, rep, p.whyf("slave of group %d", gp.master.ID))
	} else if gp.Master != 0 {
		// A master outside the images: the host's.
		host, why := NoHandle, ""
		for _, m := range gp.Members {
			if host, why = p.hostAnchor(m, true); host != NoHandle {
				break
			}
		}
		if host != NoHandle {
			p.setGroup(host, gp.rep, rep, p.whyf("join the host mount's group, to become its slave (master %d when dumped)", gp.Master))
			p.propagation(OpMakeSlave, gp.rep, rep, p.whyf("slave of the host group (master %d when dumped)", gp.Master))
		} else if err := p.noHost(gp.Members[0], fmt.Sprintf("its master, peer group %d, is not in the images", gp.Master), why); err != nil {
			return err
		}
	}
	p.propagation(OpMakeShared, gp.rep, rep, p.whyf("peer group %d starts here", gp.ID))
	for _, m := range gp.Members {
		if m != rep {
			p.setGroup(gp.rep, p.h(m), m, p.whyf("peer of group %d", gp.ID))
		}
	}
	p.slavesOf(gp)
	return nil
}

// slavesOf plans the slave-only mounts of a group: each joins the group
// through its representative, then becomes a slave.
func (p *planner) slavesOf(gp *groupPlan) {
	for _, s := range gp.Slaves {
		if s.PeerGroup != 0 {
			continue // a shared slave: its own group copies the master
		}
		p.setGroup(gp.rep, p.h(s), s, p.whyf("join group %d, to become its slave", gp.ID))
		p.propagation(OpMakeSlave, p.h(s), s, p.whyf("slave of group %d", gp.ID))
	}
}

// helper plans a private bind of gp.need from a mount of the group's
// superblock that exposes it.
func (p *planner) helper(gp *groupPlan) (Handle, error) {
	from, sub, ok := p.exposing(gp.dev, gp.need)
	if !ok {
		m := gp.Members[0]
		return NoHandle, &UnsupportedError{Mounts: []string{fmt.Sprintf(
			"namespace %d, mount %d (%s): peer group %d needs a mount of root %q to copy from, and no mount of superblock %s exposes it",
			m.NS.ID, m.ID, m.Mountpoint, gp.ID, gp.need, forest.DevString(gp.dev))}}
	}
	h := p.newHandle(HandleInfo{Helper: true, What: fmt.Sprintf("helper for peer group %d: root %s", gp.ID, gp.need)})
	s := step(OpBind)
	s.Handle, s.From, s.Path = h, from, sub
	s.Why = fmt.Sprintf("helper: no member of group %d has a root containing %s, the common root of the mounts that copy from it", gp.ID, gp.need)
	p.add(s)
	p.plan.Helpers++
	return h, nil
}

// exposing finds a handle of superblock dev whose root contains root, and
// the path of root inside it.
func (p *planner) exposing(dev uint32, root string) (Handle, string, bool) {
	if h, ok := p.source[dev]; ok {
		return h, rel(root), true
	}
	if p.in.Live != nil {
		if src := widestContaining(p.devMounts[dev], root); src != nil {
			return p.h(src), relTo(root, src.Root), true
		}
		return NoHandle, "", false
	}
	if src := widestContaining(p.extRoot[dev], root); src != nil {
		return p.handle[src], relTo(root, src.Root), true
	}
	if r := p.rootMnt; r != nil && r.Dev == dev && contains(r.Root, root) {
		return p.handle[r], relTo(root, r.Root), true
	}
	return NoHandle, "", false
}

func (p *planner) setGroup(from, to Handle, m *forest.Mount, why string) {
	s := step(OpSetGroup)
	s.From, s.Handle, s.Why = from, to, why
	if m != nil {
		s.NS, s.Mount = m.NS.ID, m.ID
	}
	p.add(s)
}

func (p *planner) propagation(op Op, h Handle, m *forest.Mount, why string) {
	s := step(op)
	s.Handle, s.Why = h, why
	if m != nil {
		s.NS, s.Mount = m.NS.ID, m.ID
	}
	p.add(s)
}
