package restore

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
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

// userMountable are the filesystems a user namespace's root may make
// (FS_USERNS_MOUNT) and whose instance depends on nothing but the opener's
// user namespace: a container in one makes them owned by it.
// (Not overlay: it keeps its maker's credentials for its layers, and a
// runtime makes a container's root overlay itself.)
var userMountable = map[string]bool{"tmpfs": true, "ramfs": true, "devpts": true}

// ownedSuperblock makes a new-superblock step s of the filesystem of mounts
// owned by the user namespace that owns the first one's namespace, when the
// images' was owned by a container's: CRIU makes every mount inside the
// root task's user namespace, so such a superblock is the container's (the
// kernel shows no superblock's owner). A filesystem the container could not
// have made, or one with an idmapped mount (a runtime's volume, idmapped
// for the container), is made by the restorer, as it was.
func (p *planner) ownedSuperblock(s *Step, mounts []*forest.Mount) {
	ns := mounts[0].NS
	if !ns.OwnerKnown || ns.Owner == nil || !userMountable[mounts[0].FSType] {
		return
	}
	for _, m := range mounts {
		if m.IDMap != nil {
			return
		}
	}
	s.NS, s.UserNS = ns.ID, true
	s.Why += ", owned by the user namespace owning namespace " + u32(ns.ID)
}

// ownedFill makes fill step s of a superblock that new-superblock step sb
// makes owned by a user namespace (that of first's namespace) extract as
// that namespace's root: the kernel makes no inode there for an id it does
// not map.
func ownedFill(s *Step, sb Step, first *forest.Mount) {
	if sb.UserNS {
		s.AsRoot = first.NS.Owner
		s.Why += ", extracted as the root of the user namespace that owns it"
	}
}

// hostIDs maps the uid= and gid= of a superblock's options to this user
// namespace's ids: CRIU writes them as the root task's user namespace sees
// them, when it has one (criu/proc_parse.c sb_opt_cb, userns_uid).
func (p *planner) hostIDs(opts string) string {
	if owner := p.rootMnt.NS.Owner; p.rootMnt.NS.OwnerKnown && owner != nil {
		return owner.MapOptionIDs(opts, images.ToParent)
	}
	return opts
}

// fill plans the tmpfs content of superblock dev (handle h) from its
// archive. CRIU archives with tar inside the root task's user namespace
// when it has one (criu/filesystems.c tmpfs_dump, root_ns_mask &
// CLONE_NEWUSER), so the owners it holds are that namespace's ids, as the
// mount it archived through shows them (an idmapped one maps them).
func (p *planner) fill(h Handle, dev uint32) Step {
	s := step(OpFillTmpfs)
	s.Handle, s.Dev = h, dev
	s.Why = "tmpfs content from tmpfs-dev-" + u32(dev) + ".tar.gz.img"
	if ns := p.rootMnt.NS; ns.OwnerKnown && ns.Owner != nil {
		s.Owner = ns.Owner
		s.Why += ", archived by CRIU in the root task's user namespace (" + ns.Owner.String() + "): its owners mapped to this one's"
	}
	if d := p.dumpedThrough(dev); d != nil && d.IDMap != nil && len(d.IDMap.UID)+len(d.IDMap.GID) > 0 {
		s.IDMap = d.IDMap
		s.Why += ", archived by CRIU through idmapped mount " + u32(d.ID) + " (" + d.IDMap.String() + "): its owners mapped back"
	}
	return s
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
