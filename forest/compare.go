package forest

import (
	"fmt"
)

// Kind says who is answerable for a difference, so that a caller can tell
// a wrong restore from a tree the restorer chose to change.
type Kind string

// The kinds of Difference.
const (
	// Sharing: peer groups, masters, unbindable.
	KindSharing Kind = "sharing"
	// Tree: a mount missing, extra or elsewhere, or another filesystem,
	// superblock, root or source than the images say.
	KindTree Kind = "tree"
	// Flags: the per-mount flags (ro, nosuid, nodev, noexec, atime).
	KindFlags Kind = "flags"
	// Remapped: what CRIU or the runtime chose at restore time, which the
	// images cannot decide: an external mount's root, filesystem and
	// superblock (the host path it is bound from), a cgroup mount's root
	// (the restoring cgroup namespace).
	KindRemapped Kind = "remapped"
)

// Difference is one way in which a found forest differs from the expected.
type Difference struct {
	Kind       Kind   `json:"kind"`
	NS         uint32 `json:"ns"`
	Mount      uint32 `json:"mount,omitempty"` // the expected mount's id, 0 for an unexpected one or a namespace
	Mountpoint string `json:"mountpoint"`      // the mount, as Mount.Describe gives it
	What       string `json:"what"`            // "missing mount", "root path", "peer group", ...
	Expected   string `json:"expected"`
	Found      string `json:"found"`
}

func (d Difference) String() string {
	return fmt.Sprintf("mount namespace %d, %s: %s: expected %s, found %s [%s]", d.NS, d.Mountpoint, d.What, d.Expected, d.Found, d.Kind)
}

// Compare reports how found differs from expected. The two are identical
// when they are the same trees by mountpoint (including the stacking order
// of overmounts) with the same root path, filesystem type, source, per-mount
// flags and unbindable state, and when mount ids, device numbers and peer
// group numbers can be renamed, one to one, to turn one into the other. The
// root mount of each namespace is compared by mountpoint, flags and sharing only. What the
// expected side cannot know is not compared: an external mount's source
// (the host's), a filesystem type CRIU did not record (UNSUPPORTED), a flag
// in expected.Lossy that expected lacks, and tracefs mounts, which CRIU
// never writes to its images (criu/filesystems.c tracefs_parse) and which
// come back under debugfs by themselves. Namespaces are paired by id.
func Compare(expected, found *Forest) []Difference {
	c := &comparison{
		devs:     newBijection(),
		groups:   newBijection(),
		expNames: groupNames(expected),
		fndNames: groupNames(found),
		lossy:    expected.Lossy,
	}
	for _, ens := range expected.Namespaces {
		fns := found.Namespace(ens.ID)
		if fns == nil {
			c.add(KindTree, ens.ID, "/", "namespace", "present", "no such namespace")
			continue
		}
		c.namespace(ens, fns)
	}
	for _, fns := range found.Namespaces {
		if expected.Namespace(fns.ID) == nil {
			c.add(KindTree, fns.ID, "/", "namespace", "no such namespace", "present")
		}
	}
	return c.diffs
}

type comparison struct {
	diffs              []Difference
	devs, groups       *bijection
	expNames, fndNames map[uint32]*Mount
	lossy              Flags
}

func (c *comparison) add(k Kind, ns uint32, where, what, exp, fnd string) {
	c.diffs = append(c.diffs, Difference{Kind: k, NS: ns, Mountpoint: where, What: what, Expected: exp, Found: fnd})
}

// addAt reports a difference at mount m.
func (c *comparison) addAt(k Kind, m *Mount, what, exp, fnd string) {
	c.add(k, m.NS.ID, m.Describe(), what, exp, fnd)
	c.diffs[len(c.diffs)-1].Mount = m.ID
}

func (c *comparison) namespace(ens, fns *Namespace) {
	if ens.OwnerKnown && fns.OwnerKnown && ens.OwnerString() != fns.OwnerString() {
		c.add(KindTree, ens.ID, "/", "owning user namespace", ownerName(ens), ownerName(fns))
	}
	m := Match(ens, fns)
	for _, e := range m.Order {
		if e.IsRoot() {
			c.root(e, m.Pairs[e])
		} else {
			c.mount(e, m.Pairs[e])
		}
	}
	for _, e := range m.Missing {
		c.addAt(KindTree, e, "missing mount", describeMount(e), "nothing mounted there")
	}
	for _, f := range m.Extra {
		if !NeverInImages(f) {
			c.add(KindTree, f.NS.ID, f.Describe(), "unexpected mount", "nothing mounted there", describeMount(f))
		}
	}
}

// Matching pairs the mounts of two trees of one namespace by position:
// mountpoint under the matched parent, which includes the stacking order.
type Matching struct {
	Pairs   map[*Mount]*Mount // expected -> found
	Order   []*Mount          // the expected mounts that were paired, parents first
	Missing []*Mount          // expected mounts with nothing at their place
	Extra   []*Mount          // found mounts with no expected mount at their place
}

// Match pairs expected's mounts with found's, walking both trees from their
// roots; it looks at positions only, not at what is mounted.
func Match(expected, found *Namespace) *Matching {
	res := &Matching{Pairs: make(map[*Mount]*Mount, len(expected.Mounts))}
	type pair struct{ e, f *Mount }
	queue := []pair{{expected.Root, found.Root}}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		res.Pairs[p.e] = p.f
		res.Order = append(res.Order, p.e)
		fch := make(map[string]*Mount, len(p.f.Children))
		for _, ch := range p.f.Children {
			fch[ch.Mountpoint] = ch
		}
		for _, ech := range p.e.Children {
			if fc, ok := fch[ech.Mountpoint]; ok {
				queue = append(queue, pair{ech, fc})
				delete(fch, ech.Mountpoint)
				continue
			}
			res.Missing = append(res.Missing, ech)
		}
		for _, fc := range p.f.Children {
			if _, extra := fch[fc.Mountpoint]; extra {
				res.Extra = append(res.Extra, fc)
			}
		}
	}
	return res
}

func describeMount(m *Mount) string {
	fs := m.FSType
	if fs == "" {
		fs = "external"
	}
	return fmt.Sprintf("%s %s root %s", fs, m.Source, m.Root)
}

// mount compares a matched pair of non-root mounts.
func (c *comparison) mount(e, f *Mount) {
	// What an external mount is bound from is the restoring host's
	// choice (--ext-mount-map, a runtime's new host paths); a cgroup
	// mount's root is relative to the restoring cgroup namespace.
	where := KindTree
	if e.External != "" || f.External != "" {
		where = KindRemapped
	}
	if e.Root != f.Root {
		k := where
		if e.FSType == "cgroup" || e.FSType == "cgroup2" {
			k = KindRemapped
		}
		c.addAt(k, e, "root path", e.Root, f.Root)
	}
	if e.FSType != "" && f.FSType != "" && e.FSType != f.FSType {
		c.addAt(where, e, "filesystem type", e.FSType, f.FSType)
	}
	if e.External == "" && e.Source != f.Source {
		c.addAt(KindTree, e, "source", e.Source, f.Source)
	}
	c.flags(e, f)
	if e.Unbindable != f.Unbindable {
		c.addAt(KindSharing, e, "unbindable", yesNo(e.Unbindable), yesNo(f.Unbindable))
	}
	if e.Deleted != f.Deleted {
		c.addAt(KindTree, e, "deleted root", yesNo(e.Deleted), yesNo(f.Deleted))
	}
	c.superblock(e, f, where)
	c.sharing(e, f, "peer group", e.PeerGroup, f.PeerGroup, "shared")
	c.sharing(e, f, "master", e.Master, f.Master, "master")
}

// root compares the root mounts of a namespace: what they are is the
// restorer's choice, but not their flags and sharing.
func (c *comparison) root(e, f *Mount) {
	c.flags(e, f)
	if e.Unbindable != f.Unbindable {
		c.addAt(KindSharing, e, "unbindable", yesNo(e.Unbindable), yesNo(f.Unbindable))
	}
	c.sharing(e, f, "peer group", e.PeerGroup, f.PeerGroup, "shared")
	c.sharing(e, f, "master", e.Master, f.Master, "master")
}

func (c *comparison) flags(e, f *Mount) {
	ef, ff := e.Flags, f.Flags
	if lost := c.lossy &^ IDMapsUnknown &^ ef; lost != 0 {
		ff &^= lost // expected cannot say these flags were not set
	}
	if ef != ff {
		c.addAt(KindFlags, e, "flags", ef.String(), ff.String())
	}
	if ei, fi := e.IDMapString(), f.IDMapString(); ei != fi && (c.lossy&IDMapsUnknown == 0 || e.IDMap != nil) {
		c.addAt(KindFlags, e, "idmap", orNone(ei), orNone(fi))
	}
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// NeverInImages says whether a live mount is one CRIU leaves out of its
// images on purpose, so that its absence there is no difference: tracefs
// (criu/filesystems.c tracefs_parse skips it; a debugfs mount brings it
// back, restored recursively), and what is mounted on it.
func NeverInImages(m *Mount) bool {
	for ; m != nil; m = m.Parent {
		if m.FSType == "tracefs" {
			return true
		}
	}
	return false
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func (c *comparison) superblock(e, f *Mount, k Kind) {
	switch other := c.devs.link(e.Dev, f.Dev, e, f); {
	case other == nil:
	case other.fwd:
		c.addAt(k, e, "superblock",
			"the superblock of "+other.e.Describe(), "a different superblock from "+other.f.Describe())
	default:
		c.addAt(k, e, "superblock",
			"a superblock of its own, not that of "+other.e.Describe(), "the superblock of "+other.f.Describe())
	}
}

func (c *comparison) sharing(e, f *Mount, what string, eid, fid uint32, tag string) {
	if eid == 0 && fid == 0 {
		return
	}
	if eid == 0 || fid == 0 {
		c.addAt(KindSharing, e, what, c.group(tag, eid, c.expNames), c.group(tag, fid, c.fndNames))
		return
	}
	if other := c.groups.link(eid, fid, e, f); other != nil {
		c.addAt(KindSharing, e, what, c.group(tag, eid, c.expNames), c.group(tag, fid, c.fndNames))
	}
}

// group describes a peer group id: "shared:3 (the peer group of /tmp/p)".
func (c *comparison) group(tag string, id uint32, names map[uint32]*Mount) string {
	if id == 0 {
		if tag == "shared" {
			return "no peer group"
		}
		return "no master"
	}
	s := fmt.Sprintf("%s:%d", tag, id)
	if m := names[id]; m != nil {
		s += fmt.Sprintf(" (the peer group of %s in namespace %d)", m.Describe(), m.NS.ID)
	} else if tag == "master" {
		s += " (a peer group outside these namespaces)"
	}
	return s
}

// groupNames maps each peer group to its first member, for messages.
func groupNames(f *Forest) map[uint32]*Mount {
	names := map[uint32]*Mount{}
	for _, g := range f.Groups() {
		if len(g.Members) > 0 {
			names[g.ID] = g.Members[0]
		}
	}
	return names
}

// bijection renames ids of the expected forest to ids of the found one and
// refuses a renaming that is not one to one.
type bijection struct {
	fwd, rev map[uint32]uint32
	byE, byF map[uint32]conflict // the pair that first linked an expected / found id
}

// conflict is the earlier pair that contradicts a new link.
type conflict struct {
	fwd  bool // the expected id was already renamed to another found id
	e, f *Mount
}

func newBijection() *bijection {
	return &bijection{fwd: map[uint32]uint32{}, rev: map[uint32]uint32{},
		byE: map[uint32]conflict{}, byF: map[uint32]conflict{}}
}

// link records that expected id a is found as b (for the pair e, f), or
// returns the earlier pair that contradicts it.
func (bj *bijection) link(a, b uint32, e, f *Mount) *conflict {
	if got, ok := bj.fwd[a]; ok {
		if got == b {
			return nil
		}
		c := bj.byE[a]
		c.fwd = true
		return &c
	}
	if _, ok := bj.rev[b]; ok {
		c := bj.byF[b]
		return &c
	}
	bj.fwd[a], bj.rev[b] = b, a
	bj.byE[a], bj.byF[b] = conflict{e: e, f: f}, conflict{e: e, f: f}
	return nil
}

// Summary is "identical: N namespaces, M mounts" for identical forests, or
// the count of differences.
func Summary(f *Forest, diffs []Difference) string {
	if len(diffs) == 0 {
		return fmt.Sprintf("identical: %d namespaces, %d mounts", len(f.Namespaces), f.Len())
	}
	return fmt.Sprintf("%d differences", len(diffs))
}

func ownerName(ns *Namespace) string {
	if o := ns.OwnerString(); o != "" {
		return "one with maps " + o
	}
	return "the initial one"
}
