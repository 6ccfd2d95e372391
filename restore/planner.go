package restore

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/mntv2/mntv2/forest"
)

// planner builds a Plan; it holds the handle of every mount created.
type planner struct {
	in      Input
	plan    *Plan
	handle  map[*forest.Mount]Handle
	source  map[uint32]Handle          // superblock (dev) -> handle of a new mount of its root
	extRoot map[uint32][]*forest.Mount // superblock -> its external mounts
	born    map[uint32]*forest.Mount   // peer group -> the representative its members are cloned from
	// idmapped is a handle's idmap (forest.Mount.IDMapString; "" none).
	idmapped map[Handle]string
	// errs are mounts the plan cannot make as the images say (problem).
	errs []error

	// The root mount of the root namespace: the restore root. Every other
	// mount, other namespaces' roots included, comes from src.
	rootMnt *forest.Mount
	src     map[*forest.Mount]source

	// Host groups that cannot be joined (noHost).
	noHosts []string

	// Deleted roots made again, removed after the sharing.
	deletedSeen  map[string]bool
	deletedSteps []Step

	// Sharing phase and live plans.
	groups     map[uint32]*groupPlan
	devMounts  map[uint32][]*forest.Mount // live: superblock -> its mounts
	hostByPath map[string]Handle          // host path -> handle of the host mount it lies on
}

func newPlanner(in Input) *planner {
	n := 0
	if in.Forest != nil {
		n = in.Forest.Len()
	}
	// At most about four steps and one handle per mount: sized once.
	plan := &Plan{Steps: make([]Step, 0, 4*n+16), Handles: make([]HandleInfo, 0, n+16)}
	p := &planner{in: in, plan: plan, handle: make(map[*forest.Mount]Handle, n),
		source: map[uint32]Handle{}, extRoot: map[uint32][]*forest.Mount{},
		born: map[uint32]*forest.Mount{}, idmapped: map[Handle]string{}, devMounts: map[uint32][]*forest.Mount{}, hostByPath: map[string]Handle{},
		deletedSeen: map[string]bool{}}
	if in.Forest != nil && len(in.Forest.Namespaces) > 0 {
		p.rootMnt = rootNamespace(in).Root
		p.walk(func(m *forest.Mount) {
			if m.External != "" {
				p.extRoot[m.Dev] = append(p.extRoot[m.Dev], m)
			}
		})
	}
	return p
}

func (p *planner) newHandle(info HandleInfo) Handle {
	p.plan.Handles = append(p.plan.Handles, info)
	return Handle(len(p.plan.Handles) - 1)
}

func (p *planner) add(s Step) {
	p.plan.Steps = append(p.plan.Steps, s)
}

func step(op Op) Step { return Step{Op: op, Handle: NoHandle, From: NoHandle, Parent: NoHandle} }

// NewPlan plans the restore of every namespace of in.Forest. It is pure: it
// reads only its input. An *UnsupportedError lists every mount that cannot
// be restored.
func NewPlan(in Input) (*Plan, error) {
	f := in.Forest
	p := newPlanner(in)
	if err := p.resolveSources(); err != nil {
		return nil, err
	}
	// Filling a tmpfs runs beside the other steps (see fill): the fills
	// come first, so that the rest overlaps them.
	p.fills()
	for _, ns := range f.Namespaces {
		p.plan.Namespaces = append(p.plan.Namespaces, ns.ID)
	}
	// The root namespace first: the other namespaces' mounts of the
	// restore root are bound from its root mount.
	r := p.rootMnt
	h := p.newHandle(HandleInfo{NS: r.NS.ID, Mount: r.ID, Root: true, What: "root of namespace " + u32(r.NS.ID)})
	p.handle[r] = h
	s := step(OpCreateNamespace)
	s.NS, s.Mount, s.Handle = r.NS.ID, r.ID, h
	s.Why = "a new mount namespace whose root mount is a private bind of the restore root"
	p.owned(&s, r.NS)
	p.add(s)
	order, byID, err := p.analyzeSharing()
	if err != nil {
		return nil, err
	}
	p.bornPeers(order)
	if err := p.createMounts(); err != nil {
		return nil, err
	}
	if err := errors.Join(p.errs...); err != nil {
		return nil, err
	}
	// Every other namespace is entered with its root mount, made above.
	for _, ns := range f.Namespaces {
		if ns.Root == r {
			continue
		}
		p.plan.Handles[p.handle[ns.Root]].Root = true
		s := step(OpCreateNamespace)
		s.NS, s.Mount, s.Handle, s.From = ns.ID, ns.Root.ID, p.handle[ns.Root], p.handle[ns.Root]
		s.Why = "a new mount namespace whose root mount is the mount made for it"
		p.owned(&s, ns)
		p.add(s)
	}
	p.assemble()
	p.groups = byID
	if err := p.planGroups(order); err != nil {
		return nil, err
	}
	if err := p.hostMasters(); err != nil {
		return nil, err
	}
	p.plan.Steps = append(p.plan.Steps, p.deletedSteps...)
	p.finish()
	return p.plan, nil
}

func u32(v uint32) string { return fmt.Sprint(v) }

// externalPath is the host path an external mount is bound from.
func (p *planner) externalPath(m *forest.Mount) (string, bool) {
	if hp, ok := p.in.External[m.External]; ok {
		return hp, true
	}
	if !p.in.Auto {
		return "", false
	}
	// CRIU's auto mode records the host path as the source ("//usr/bin");
	// fall back to the mountpoint: the same path on this host.
	if strings.HasPrefix(m.Source, "/") {
		return path.Clean(m.Source), true
	}
	return m.Mountpoint, true
}

// rel turns an absolute path into one relative to "/" ("" for "/").
func rel(p string) string { return strings.TrimPrefix(strings.TrimPrefix(p, "/"), "/") }

// relTo is p relative to dir, which contains it ("" when equal).
func relTo(p, dir string) string {
	if dir == "/" {
		return rel(p)
	}
	return rel(strings.TrimPrefix(p, dir))
}

// createMounts plans every mount as a detached, private mount, superblock
// by superblock: external mounts are cloned from the host; a mount of the
// restore root, or of an external mount's superblock, is a bind of it; the
// others are binds of a new superblock, filled with its tmpfs content. A
// mount whose root was deleted comes last (see deletedBind).
func (p *planner) createMounts() error {
	order, bySB := p.bySuperblock(func(*forest.Mount) bool { return true })
	var deleted []*forest.Mount
	for _, dev := range order {
		var fresh []*forest.Mount
		for _, m := range p.extRoot[dev] {
			if m.Deleted {
				deleted = append(deleted, m)
				continue
			}
			hostPath, _ := p.externalPath(m)
			h := p.newHandle(HandleInfo{NS: m.NS.ID, Mount: m.ID, What: "external " + m.Mountpoint})
			p.handle[m] = h
			s := step(OpOpenExternal)
			s.NS, s.Mount, s.Handle, s.Path = m.NS.ID, m.ID, h, hostPath
			s.Why = fmt.Sprintf("external mount %q: a private clone of %s on this host", m.External, hostPath)
			p.add(s)
			p.idmap(m, h, NoHandle)
		}
		for _, m := range bySB[dev] {
			src := p.src[m]
			switch {
			case src.kind == fromHost:
			case m.Deleted:
				deleted = append(deleted, m)
				if src.kind == fromNew {
					p.sourceHandle(dev, bySB[dev])
				}
			case src.kind == fromRestoreRoot:
				// Bound inside the root namespace: the kernel clones only
				// mounts of the caller's namespace.
				p.bind(m, p.handle[src.from], relTo(m.Root, src.from.Root), "a bind of the restore root at "+m.Root)
			case src.kind == fromExternal:
				p.bind(m, p.handle[src.from], relTo(m.Root, src.from.Root), "a mount of an external superblock, bound from "+src.from.Mountpoint)
			case src.kind == fromNew && m.FSType == "overlay":
				// Made in its namespace after the rest (lateMounts).
			case src.kind == fromNew:
				fresh = append(fresh, m)
			}
		}
		if len(fresh) == 0 {
			continue
		}
		src := p.sourceHandle(dev, fresh)
		for _, m := range fresh {
			if rep := p.born[m.PeerGroup]; rep != nil {
				p.bindPeer(m, rep, src)
			} else {
				p.bind(m, src, rel(m.Root), "a private bind of root "+m.Root)
			}
		}
	}
	for _, m := range deleted {
		p.deletedBind(m)
	}
	return nil
}

// sourceHandle is the new superblock of dev, planned the first time.
func (p *planner) sourceHandle(dev uint32, mounts []*forest.Mount) Handle {
	if h, ok := p.source[dev]; ok {
		return h
	}
	return p.newSuperblock(mounts)
}

// deletedBind plans a bind of a mount whose root was deleted: the root is
// made again in its source, bound, and removed once the sharing is done
// (removeDeleted), so that the mount shows its root deleted again. Every
// other mount is made by then, its parent included: whether the root is a
// directory or a file is read from its mountpoint, as CRIU does.
func (p *planner) deletedBind(m *forest.Mount) {
	from, sub, op := NoHandle, "", OpBind
	switch src := p.src[m]; src.kind {
	case fromHost:
		// CRIU makes it again at the host path (criu/mount-v2.c
		// do_bind_mount_v2).
		sub, _ = p.externalPath(m)
		op = OpOpenExternal
	case fromNew:
		from, sub = p.source[m.Dev], rel(m.Root)
	default:
		from, sub = p.h(src.from), relTo(m.Root, src.from.Root)
	}
	h := p.newHandle(HandleInfo{NS: m.NS.ID, Mount: m.ID, What: m.Mountpoint})
	p.handle[m] = h
	s := step(op)
	s.NS, s.Mount, s.Handle, s.From, s.Path, s.Deleted = m.NS.ID, m.ID, h, from, sub, true
	if m.Parent != nil {
		s.Parent, s.Target = p.handle[m.Parent], relTo(m.Mountpoint, m.Parent.Mountpoint)
	}
	s.Why = "its root " + m.Root + " was deleted: made again, bound, removed after the sharing"
	p.add(s)
	key := fmt.Sprintf("%d\x00%s", from, sub)
	if !p.deletedSeen[key] {
		p.deletedSeen[key] = true
		r := step(OpRemoveDeleted)
		r.From, r.Path, r.NS, r.Mount = from, sub, m.NS.ID, m.ID
		r.Why = "the deleted root of mount " + u32(m.ID) + " is deleted again"
		p.deletedSteps = append(p.deletedSteps, r)
	}
}

// newSuperblock plans a new instance of the filesystem of mounts (one
// superblock, none of them external) and its tmpfs content.
func (p *planner) newSuperblock(mounts []*forest.Mount) Handle {
	first := mounts[0]
	dev := first.Dev
	src := p.newHandle(HandleInfo{What: fmt.Sprintf("new %s superblock %s", first.FSType, forest.DevString(dev))})
	p.source[dev] = src
	s := step(OpNewSuperblock)
	s.Handle, s.FSType, s.Source, s.Options, s.Dev = src, first.FSType, first.Source, p.hostIDs(fsOptions(first)), dev
	s.Why = fmt.Sprintf("superblock %s of %d mounts (first %s)", forest.DevString(dev), len(mounts), first.Mountpoint)
	p.ownedSuperblock(&s, mounts)
	p.add(s)
	if p.hasContent(first) {
		f := p.fill(src, dev)
		ownedFill(&f, s, first)
		p.add(f)
	}
	return src
}

// hasContent says whether m is a mount of a tmpfs the plan makes and
// fills from the images.
func (p *planner) hasContent(m *forest.Mount) bool {
	return m.FSType == "tmpfs" && p.in.TmpfsContent[m.Dev] && p.src[m].kind == fromNew
}

// fills plans the superblocks that get tmpfs content, in the order their
// first mounts are met.
func (p *planner) fills() {
	order, byDev := p.bySuperblock(p.hasContent)
	for _, dev := range order {
		p.newSuperblock(byDev[dev])
	}
}

// bySuperblock groups the non-root mounts that keep accepts by superblock;
// order lists the superblocks as first met, for a stable plan.
func (p *planner) bySuperblock(keep func(*forest.Mount) bool) (order []uint32, by map[uint32][]*forest.Mount) {
	by = map[uint32][]*forest.Mount{}
	p.eachCreated(func(m *forest.Mount) {
		if !keep(m) {
			return
		}
		if _, ok := by[m.Dev]; !ok {
			order = append(order, m.Dev)
		}
		by[m.Dev] = append(by[m.Dev], m)
	})
	return order, by
}

// bindPeer plans m as a clone of its group's shared representative, a
// peer from birth (see bornPeers). The representative comes first: a bind
// of the new superblock, made shared while still detached.
func (p *planner) bindPeer(m, rep *forest.Mount, src Handle) {
	if _, ok := p.handle[rep]; !ok {
		p.bind(rep, src, rel(rep.Root), "a bind of root "+rep.Root+", shared before the other members are cloned from it")
		p.propagation(OpMakeShared, p.handle[rep], rep, fmt.Sprintf("peer group %d starts here; its members are born in it", rep.PeerGroup))
	}
	if m != rep {
		p.bind(m, p.handle[rep], relTo(m.Root, rep.Root), fmt.Sprintf("a clone of shared mount %d: a peer of group %d from birth", rep.ID, m.PeerGroup))
	}
}

func (p *planner) bind(m *forest.Mount, from Handle, subpath, why string) {
	h := p.newHandle(HandleInfo{NS: m.NS.ID, Mount: m.ID, What: m.Mountpoint})
	p.handle[m] = h
	s := step(OpBind)
	s.NS, s.Mount, s.Handle, s.From, s.Path, s.Why = m.NS.ID, m.ID, h, from, subpath, why
	p.add(s)
	p.idmap(m, h, from)
}

// widestContaining is the mount with the shortest root that contains root.
func widestContaining(ms []*forest.Mount, root string) *forest.Mount {
	var best *forest.Mount
	for _, m := range ms {
		if contains(m.Root, root) && (best == nil || len(m.Root) < len(best.Root)) {
			best = m
		}
	}
	return best
}

// contains says whether path p is dir or below it.
func contains(dir, p string) bool {
	return dir == "/" || p == dir || strings.HasPrefix(p, dir) && p[len(dir)] == '/'
}

// finish plans unbindable, the per-mount flags, the drop of sources and
// helpers, and the pins.
func (p *planner) finish() {
	p.unbindable()
	// The restore root's mount gets its flags as CRIU gives them
	// (criu/mount-v2.c do_mount_root_v2): a read-only root stays so.
	r := p.rootMnt
	s := step(OpSetFlags)
	s.NS, s.Mount, s.Handle, s.Flags, s.Why = r.NS.ID, r.ID, p.handle[r], r.Flags, "per-mount flags of the root "+r.Flags.String()
	p.add(s)
	p.eachCreated(func(m *forest.Mount) {
		// New mounts and binds of them are rw,relatime; external clones
		// and binds of host filesystems carry the host mount's flags, so
		// they are always set.
		if m.Flags == forest.Relatime && p.src[m].kind == fromNew {
			return
		}
		s := step(OpSetFlags)
		s.NS, s.Mount, s.Handle, s.Flags, s.Why = m.NS.ID, m.ID, p.handle[m], m.Flags, "per-mount flags "+m.Flags.String()
		p.add(s)
	})
	for h, info := range p.plan.Handles {
		if info.Mount == 0 {
			s := step(OpDrop)
			s.Handle, s.Why = Handle(h), "no longer needed: "+info.What
			p.add(s)
		}
	}
	for _, ns := range p.in.Forest.Namespaces {
		s := step(OpPin)
		s.NS, s.Handle, s.Why = ns.ID, p.handle[ns.Root], "keep the namespace alive"
		p.add(s)
	}
}
