package restore

import (
	"fmt"

	"github.com/mntv2/mntv2/forest"
)

// complete plans, in a live plan, the mounts CRIU was not given (see
// Reduce): each is made detached and private as the standalone engine
// makes it, but from a restored mount of its superblock wherever there is
// one, so that the tasks' files and the new mount are on one superblock;
// then attached in its namespace, parents first and covered mounts before
// what covers them, under a restored or a new parent. The sharing phase
// that follows treats restored and new mounts alike.
func (p *planner) complete() error {
	kept := p.in.Live.Kept
	isKept := func(m *forest.Mount) bool { _, ok := kept[MountRef{m.NS.ID, m.ID}]; return ok }
	live := map[uint32][]*forest.Mount{} // superblock -> its restored mounts
	var dropped []*forest.Mount
	for _, ns := range p.in.Forest.Namespaces {
		for _, m := range attachOrder(ns) {
			if isKept(m) {
				live[m.Dev] = append(live[m.Dev], m)
			} else {
				dropped = append(dropped, m)
			}
		}
	}
	if len(dropped) == 0 {
		return nil
	}
	// Where each comes from, before anything is planned: every mount that
	// cannot be made is listed at once.
	p.src = make(map[*forest.Mount]source, len(dropped))
	var bad []string
	for _, m := range dropped {
		switch s, why := p.completeSource(m, live); {
		case why != "":
			bad = append(bad, fmt.Sprintf("namespace %d, mount %d (%s): %s", m.NS.ID, m.ID, m.Mountpoint, why))
		default:
			p.src[m] = s
		}
	}
	if len(bad) > 0 {
		return &UnsupportedError{Mounts: bad}
	}
	// Groups whose members are all made here, of one new superblock,
	// with nothing under them are peers from birth, as in a standalone
	// restore: no MOVE_MOUNT_SET_GROUP per member at post-restore.
	order, _, err := p.analyzeSharing()
	if err != nil {
		return err
	}
	p.bornPeers(order)
	// New superblocks with content first: their extraction overlaps the
	// rest.
	byDev := map[uint32][]*forest.Mount{}
	var devs []uint32
	for _, m := range dropped {
		if p.src[m].kind == fromNew {
			if _, ok := byDev[m.Dev]; !ok {
				devs = append(devs, m.Dev)
			}
			byDev[m.Dev] = append(byDev[m.Dev], m)
		}
	}
	for _, dev := range devs {
		if byDev[dev][0].FSType != "overlay" && p.hasContent(byDev[dev][0]) {
			p.newSuperblock(byDev[dev])
		}
	}
	// External mounts first: others may be bound from them.
	var deleted []*forest.Mount
	for _, m := range dropped {
		if p.src[m].kind == fromHost && !m.Deleted {
			hostPath, _ := p.externalPath(m)
			h := p.newHandle(HandleInfo{NS: m.NS.ID, Mount: m.ID, What: "external " + m.Mountpoint})
			p.handle[m] = h
			s := step(OpOpenExternal)
			s.NS, s.Mount, s.Handle, s.Path = m.NS.ID, m.ID, h, hostPath
			s.Why = p.whyf("external mount %q: a private clone of %s on this host", m.External, hostPath)
			p.add(s)
			p.idmap(m, h, NoHandle)
		}
	}
	for _, m := range dropped {
		src := p.src[m]
		switch {
		case m.Deleted:
			deleted = append(deleted, m)
			if src.kind == fromNew {
				p.sourceHandle(m.Dev, byDev[m.Dev])
			}
		case src.kind == fromHost:
		case src.kind == fromNew && m.FSType == "overlay":
			// Made in its namespace after the rest (lateMounts).
		case src.kind == fromNew && p.born[m.PeerGroup] != nil:
			p.bindPeer(m, p.born[m.PeerGroup], p.sourceHandle(m.Dev, byDev[m.Dev]))
		case src.kind == fromNew:
			p.bind(m, p.sourceHandle(m.Dev, byDev[m.Dev]), rel(m.Root), p.whyf("a private bind of root %s", m.Root))
		default:
			// From a restored mount (opened), or a new external one.
			p.bind(m, p.h(src.from), relTo(m.Root, src.from.Root), p.whyf("a bind of mount %d of its superblock", src.from.ID))
		}
	}
	for _, m := range deleted {
		p.deletedBind(m)
	}
	var toAttach []*forest.Mount
	for _, m := range dropped {
		if !m.IsRoot() { // a namespace's root is always CRIU's (Reduce)
			toAttach = append(toAttach, m)
		}
	}
	early, late := lateMounts(toAttach, func(m *forest.Mount) bool { return p.src[m].kind == fromNew })
	for _, m := range early {
		p.attachStep(m)
	}
	for _, m := range late {
		p.overlay(m, byDev)
		p.attachStep(m)
	}
	for _, m := range dropped {
		if m.Flags == forest.Relatime && p.src[m].kind == fromNew {
			continue
		}
		s := step(OpSetFlags)
		s.NS, s.Mount, s.Handle, s.Flags, s.Why = m.NS.ID, m.ID, p.handle[m], m.Flags, p.whyf("per-mount flags %s", m.Flags)
		p.add(s)
	}
	return nil
}

// completeSource is where a mount CRIU was not given comes from: a
// restored mount of its superblock whose root contains its own (the
// widest), its host path when external, a new external mount of its
// superblock, or a new superblock of a type the standalone engine makes.
func (p *planner) completeSource(m *forest.Mount, live map[uint32][]*forest.Mount) (source, string) {
	if l := widestContaining(live[m.Dev], m.Root); l != nil {
		return source{kind: fromExternal, from: l}, ""
	}
	if m.External != "" {
		if _, ok := p.externalPath(m); !ok {
			return source{}, fmt.Sprintf("external mount %q has no host path in the images", m.External)
		}
		return source{kind: fromHost}, ""
	}
	if e := widestContaining(p.extRoot[m.Dev], m.Root); e != nil {
		return source{kind: fromExternal, from: e}, ""
	}
	if _, ok := FreshFS[m.FSType]; ok {
		return source{kind: fromNew}, ""
	}
	return source{}, fmt.Sprintf("no restored mount of its superblock %s contains its root %s, and mntv2 cannot make %q fresh", forest.DevString(m.Dev), m.Root, m.FSType)
}

// persistent says whether a restored mount's filesystem outlives the
// restore: the restore root's, or the host's (an external mount's).
func (p *planner) persistent(m *forest.Mount) bool {
	r := p.rootMnt
	return m.Dev == r.Dev || m.External != "" || p.extRoot[m.Dev] != nil
}
