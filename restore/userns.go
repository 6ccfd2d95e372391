package restore

import (
	"cmp"
	"fmt"
	"github.com/mntv2/mntv2/images"
	"slices"

	"github.com/mntv2/mntv2/forest"
)

// owned makes a create-namespace step s make a namespace owned by the
// restore's user namespace when the images' ns was owned by the container's.
func (p *planner) owned(s *Step, ns *forest.Namespace) {
	if ns.OwnerKnown && ns.Owner != nil {
		s.UserNS = true
		s.Why += ", owned by the user namespace given (--userns; the images': " + ns.OwnerString() + ")"
		if p.plan.Owners == nil {
			p.plan.Owners = map[uint32]*images.IDMaps{}
		}
		p.plan.Owners[ns.ID] = ns.Owner
	}
}

// problem records that m cannot be made as the images say, and why.
func (p *planner) problem(m *forest.Mount, why string) {
	p.errs = append(p.errs, fmt.Errorf("namespace %d, mount %d (%s): %s", m.NS.ID, m.ID, m.Mountpoint, why))
}

// idmap plans the idmap of m (handle h, cloned from from), before anything
// else is done with the clone: the kernel idmaps only a mount never
// attached. A clone keeps its source's idmap, and an idmap cannot be
// taken away: a source with another one is refused.
func (p *planner) idmap(m *forest.Mount, h, from Handle) {
	want, have := m.IDMapString(), p.idmapped[from]
	p.idmapped[h] = have
	switch {
	case want == have:
	case have != "":
		p.problem(m, fmt.Sprintf("it would be cloned from a mount idmapped %s, and an idmap cannot be taken away", have))
	case len(m.IDMap.UID) == 0 && len(m.IDMap.GID) == 0:
		p.problem(m, "it was idmapped, and the record of its maps is empty")
	default:
		s := step(OpSetIDMap)
		s.NS, s.Mount, s.Handle, s.IDMap = m.NS.ID, m.ID, h, m.IDMap
		s.Why = "idmapped at dump time (mntv2's dump-side record): " + m.IDMap.String()
		p.add(s)
		p.idmapped[h] = want
	}
}

// dumpedThrough is the mount of superblock dev CRIU archived a tmpfs's
// content through (criu/mount.c dump_one_fs: the first mount of the
// superblock, in its list, whose root is the filesystem's root): the root
// task's namespace first, then the others, each in image order.
func (p *planner) dumpedThrough(dev uint32) *forest.Mount {
	f := p.in.Forest
	nss := append([]*forest.Namespace{}, f.Namespaces...)
	slices.SortStableFunc(nss, func(a, b *forest.Namespace) int {
		return cmp.Compare(b2i(a.ID != p.rootMnt.NS.ID), b2i(b.ID != p.rootMnt.NS.ID))
	})
	for _, ns := range nss {
		for _, m := range ns.Mounts {
			if m.Dev == dev && m.Root == "/" {
				return m
			}
		}
	}
	return nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
