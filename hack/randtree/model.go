package main

// The generator's model of the container's mounts: filesystems with the
// directories and files the scenario made in them, mounts with their parent,
// mountpoint, root, flags and propagation, and the kernel's rules for
// propagating mounts and unmounts through peer groups and slaves (clone_mnt,
// propagate_mnt, do_make_slave in fs/namespace.c and fs/pnode.c). The model
// only has to be close enough that the operations it picks are valid; every
// operation of the script is guarded anyway, and the runner counts the ones
// that failed.

import (
	"path"
	"sort"
	"strings"
)

// fsys is a superblock.
type fsys struct {
	id      int
	kind    string // tmpfs (the scenario's), ctroot, dev, tmp, foreign (content unknown)
	dirs    map[string]bool
	files   map[string]bool
	ro      bool // superblock read-only
	tmpOpts string
}

// group is a peer group.
type group struct{ id int }

type mount struct {
	id         int
	ns         *nspace
	parent     *mount
	mp         string // the mountpoint: a dentry of parent.fs
	fs         *fsys
	root       string // the root: a dentry of fs
	isFile     bool
	ro         bool
	nosuid     bool
	nodev      bool
	noexec     bool
	atime      string // relatime, noatime, strictatime
	shared     *group
	master     *group
	unbindable bool
	base       bool // the container's own mounts: never unmounted or remounted
	children   []*mount
}

type nspace struct {
	id    int
	root  *mount
	depth int
}

type model struct {
	mounts    []*mount // live, in creation order
	nextMount int
	nextGroup int
	nextFS    int
}

// inside reports whether dentry d is root or below it.
func inside(d, root string) bool {
	return root == "/" || d == root || strings.HasPrefix(d, root+"/")
}

// rel is d relative to root ("" when equal).
func rel(d, root string) string {
	if d == root {
		return ""
	}
	if root == "/" {
		return d[1:]
	}
	return d[len(root)+1:]
}

func (md *model) newFS(kind string) *fsys {
	md.nextFS++
	return &fsys{id: md.nextFS, kind: kind, dirs: map[string]bool{"/": true}, files: map[string]bool{}}
}

func (md *model) newGroup() *group {
	md.nextGroup++
	return &group{id: md.nextGroup}
}

func (md *model) newMount(ns *nspace, fs *fsys, root string) *mount {
	md.nextMount++
	return &mount{id: md.nextMount, ns: ns, fs: fs, root: root, atime: "relatime"}
}

// clone copies m's flags and, as clone_mnt without CL_PRIVATE or CL_SLAVE
// does, its propagation: a peer of a shared mount, the same master.
func (md *model) clone(m *mount, ns *nspace, root string) *mount {
	c := md.newMount(ns, m.fs, root)
	c.isFile = m.isFile && root == m.root
	c.ro, c.nosuid, c.nodev, c.noexec, c.atime = m.ro, m.nosuid, m.nodev, m.noexec, m.atime
	c.shared, c.master, c.base = m.shared, m.master, m.base
	return c
}

// subtree is m and every mount below it, hidden ones too, parents first.
func subtree(m *mount) []*mount {
	out := []*mount{m}
	for _, c := range m.children {
		out = append(out, subtree(c)...)
	}
	return out
}

func (md *model) members(g *group) []*mount {
	var out []*mount
	for _, m := range md.mounts {
		if m.shared == g {
			out = append(out, m)
		}
	}
	return out
}

func (md *model) childAt(m *mount, d string) *mount {
	for _, c := range m.children {
		if c.mp == d {
			return c
		}
	}
	return nil
}

func removeChild(p, c *mount) {
	for i, x := range p.children {
		if x == c {
			p.children = append(p.children[:i], p.children[i+1:]...)
			return
		}
	}
}

// attachAt puts c at (p, d); a mount already there is tucked on top of c's
// root, as the kernel does with propagated copies.
func (md *model) attachAt(c, p *mount, d string) {
	if old := md.childAt(p, d); old != nil {
		removeChild(p, old)
		old.parent, old.mp = c, c.root
		c.children = append(c.children, old)
	}
	c.parent, c.mp = p, d
	p.children = append(p.children, c)
}

// receiver is a mount a mount event at a dentry of a shared mount
// propagates to, with where its copies take their propagation from.
type receiver struct {
	m      *mount
	peer   bool   // a peer of the destination: copies join the source's groups
	from   *group // the group whose copies are the masters of this one's copies
	asPeer *group // the receiving group (nil for a slave that is not shared)
}

// receivers lists the propagation tree of dest's peer group, dest excluded:
// its peers, then the slaves of the group, recursively.
func (md *model) receivers(dest *mount) []receiver {
	if dest.shared == nil {
		return nil
	}
	var out []receiver
	for _, m := range md.members(dest.shared) {
		if m != dest {
			out = append(out, receiver{m: m, peer: true})
		}
	}
	seen := map[*group]bool{dest.shared: true}
	var walk func(g *group)
	walk = func(g *group) {
		var slaveGroups []*group
		for _, m := range md.mounts {
			if m.master != g {
				continue
			}
			if m.shared == nil {
				out = append(out, receiver{m: m, from: g})
				continue
			}
			if !seen[m.shared] {
				seen[m.shared] = true
				slaveGroups = append(slaveGroups, m.shared)
			}
		}
		for _, sg := range slaveGroups {
			for _, m := range md.members(sg) {
				out = append(out, receiver{m: m, from: g, asPeer: sg})
			}
			walk(sg)
		}
	}
	walk(dest.shared)
	return out
}

// countMount estimates how many mounts attaching a tree of n mounts at
// (dest, d) makes, propagation included.
func (md *model) countMount(dest *mount, d string, n int) int {
	total := n
	for _, r := range md.receivers(dest) {
		if inside(d, r.m.root) {
			total += n
		}
	}
	return total
}

// mountTree attaches tree (mounts not yet in md.mounts, tree[0] the top, each
// with its parent within the tree) at (dest, d) and propagates copies.
func (md *model) mountTree(tree []*mount, dest *mount, d string) {
	recv := md.receivers(dest)
	if dest.shared != nil {
		for _, t := range tree {
			if t.shared == nil {
				t.shared = md.newGroup()
				t.unbindable = false
			}
		}
	}
	md.attachAt(tree[0], dest, d)
	md.mounts = append(md.mounts, tree...)
	if dest.shared == nil {
		return
	}
	// groups[g] are the groups of the copies made in the members of g, one
	// per position of the tree; the destination's group has the tree's own.
	groups := map[*group][]*group{}
	var own []*group
	for _, t := range tree {
		own = append(own, t.shared)
	}
	groups[dest.shared] = own
	masterOf := map[*group]*group{} // receiving group -> the group its copies come from
	srcGroups := func(g *group) []*group {
		for g != nil {
			if gs, ok := groups[g]; ok {
				return gs
			}
			g = masterOf[g]
		}
		return nil
	}
	for _, r := range recv {
		if r.asPeer != nil {
			masterOf[r.asPeer] = r.from
		}
		if !inside(d, r.m.root) {
			continue
		}
		var copyShared, copyMaster []*group
		switch {
		case r.peer:
			copyShared = own
		default:
			copyMaster = srcGroups(r.from)
			if r.asPeer != nil {
				gs, ok := groups[r.asPeer]
				if !ok {
					for range tree {
						gs = append(gs, md.newGroup())
					}
					groups[r.asPeer] = gs
				}
				copyShared = gs
			}
		}
		copies := make([]*mount, len(tree))
		index := map[*mount]int{}
		for i, t := range tree {
			index[t] = i
			c := md.clone(t, r.m.ns, t.root)
			c.base = false
			c.unbindable = false
			if r.peer {
				c.master = t.master
			} else {
				c.master = nil
				if copyMaster != nil {
					c.master = copyMaster[i]
				}
			}
			c.shared = nil
			if copyShared != nil {
				c.shared = copyShared[i]
			}
			copies[i] = c
		}
		for i, t := range tree {
			if i == 0 {
				continue
			}
			p := copies[index[t.parent]]
			c := copies[i]
			c.parent, c.mp = p, t.mp
			p.children = append(p.children, c)
		}
		md.attachAt(copies[0], r.m, d)
		md.mounts = append(md.mounts, copies...)
	}
}

func (md *model) drop(m *mount) {
	for i, x := range md.mounts {
		if x == m {
			md.mounts = append(md.mounts[:i], md.mounts[i+1:]...)
			break
		}
	}
	// A group left empty passes its slaves to its master.
	if g := m.shared; g != nil {
		m.shared = nil
		if len(md.members(g)) == 0 {
			for _, x := range md.mounts {
				if x.master == g {
					x.master = m.master
				}
			}
		}
	}
}

// umountPlan is what unmounting m does: the mounts that go (m, with its
// subtree when lazy, and the mounts at the same places in the propagation
// trees of their parents that have nothing mounted on them, or only a mount
// on their root, which then takes their place) and those moves.
type umountPlan struct {
	gone  []*mount
	moves [][3]any // mount, new parent, new mountpoint
}

func (md *model) planUmount(m *mount, lazy bool) umountPlan {
	var pl umountPlan
	goneSet := map[*mount]bool{}
	direct := []*mount{m}
	if lazy {
		direct = subtree(m)
	}
	for _, x := range direct {
		goneSet[x] = true
	}
	pl.gone = append(pl.gone, direct...)
	for _, x := range direct {
		for _, r := range md.receivers(x.parent) {
			c := md.childAt(r.m, x.mp)
			if c == nil || goneSet[c] {
				continue
			}
			var left []*mount
			for _, cc := range c.children {
				if !goneSet[cc] {
					left = append(left, cc)
				}
			}
			switch {
			case len(left) == 0:
			case len(left) == 1 && left[0].mp == c.root:
				pl.moves = append(pl.moves, [3]any{left[0], r.m, x.mp})
			default:
				continue
			}
			goneSet[c] = true
			pl.gone = append(pl.gone, c)
		}
	}
	return pl
}

// dumpable reports whether every superblock of the scenario's that has a
// mount after the plan still has one of its root: CRIU 4.2 dumps a bind of a
// subdirectory only with a mount of the whole filesystem ("doesn't have a
// proper root mount").
func (md *model) dumpable(pl umountPlan) bool {
	gone := map[*mount]bool{}
	for _, x := range pl.gone {
		gone[x] = true
	}
	hasRoot, used := map[*fsys]bool{}, map[*fsys]bool{}
	for _, x := range md.mounts {
		if gone[x] || x.fs.kind == "foreign" {
			continue
		}
		used[x.fs] = true
		if x.root == "/" {
			hasRoot[x.fs] = true
		}
	}
	for fs := range used {
		if !hasRoot[fs] {
			return false
		}
	}
	return true
}

func (md *model) umount(pl umountPlan) {
	gone := map[*mount]bool{}
	for _, x := range pl.gone {
		gone[x] = true
	}
	for _, x := range pl.gone {
		if x.parent != nil && !gone[x.parent] {
			removeChild(x.parent, x)
		}
	}
	for _, mv := range pl.moves {
		top, p, d := mv[0].(*mount), mv[1].(*mount), mv[2].(string)
		removeChild(top.parent, top)
		top.parent, top.mp = p, d
		p.children = append(p.children, top)
	}
	for i := len(pl.gone) - 1; i >= 0; i-- {
		md.drop(pl.gone[i])
	}
}

// makeSlave is do_make_slave: a shared mount leaves its group and becomes a
// slave of its former peers, or, alone in it, keeps its master and hands
// the group's slaves to that master.
func (md *model) makeSlave(m *mount) {
	g := m.shared
	if g == nil {
		return
	}
	m.shared = nil
	if len(md.members(g)) > 0 {
		m.master = g
		return
	}
	for _, x := range md.mounts {
		if x.master == g {
			x.master = m.master
		}
	}
}

func (md *model) setPropagation(m *mount, mode string) {
	switch mode {
	case "shared":
		if m.shared == nil {
			m.shared = md.newGroup()
		}
		m.unbindable = false
	case "slave":
		md.makeSlave(m)
	case "private", "unbindable":
		md.makeSlave(m)
		m.master = nil
		m.unbindable = mode == "unbindable"
	}
}

// copyNamespace is copy_mnt_ns: every mount, hidden ones too, copied with
// its propagation (peers of shared mounts, same masters, unbindable kept).
func (md *model) copyNamespace(old *nspace, id int) *nspace {
	ns := &nspace{id: id, depth: old.depth + 1}
	var cp func(m, parent *mount) *mount
	cp = func(m, parent *mount) *mount {
		c := md.clone(m, ns, m.root)
		c.unbindable = m.unbindable
		c.isFile = m.isFile
		md.mounts = append(md.mounts, c)
		if parent != nil {
			c.parent, c.mp = parent, m.mp
			parent.children = append(parent.children, c)
		}
		for _, ch := range m.children {
			cp(ch, c)
		}
		return c
	}
	ns.root = cp(old.root, nil)
	return ns
}

func (md *model) inNS(ns *nspace) []*mount {
	var out []*mount
	for _, m := range md.mounts {
		if m.ns == ns {
			out = append(out, m)
		}
	}
	return out
}

// loc is a path visible in a namespace: a directory or file of a mount not
// covered by another mount.
type loc struct {
	path  string
	m     *mount
	d     string // dentry in m.fs
	isDir bool
	top   bool // d is m's root: path is a mountpoint whose top mount is m
}

func (l loc) writable() bool {
	return l.isDir && !l.m.ro && !l.m.fs.ro && l.m.fs.kind != "foreign"
}

// visible lists every path of ns the generator may use, sorted.
func (md *model) visible(ns *nspace) []loc {
	var out []loc
	var walk func(m *mount, p string)
	walk = func(m *mount, p string) {
		covered := func(e string) bool {
			for _, c := range m.children {
				if inside(e, c.mp) {
					return true
				}
			}
			return false
		}
		if m.fs.kind != "foreign" {
			var entries []string
			for e := range m.fs.dirs {
				entries = append(entries, e)
			}
			for e := range m.fs.files {
				entries = append(entries, e)
			}
			sort.Strings(entries)
			for _, e := range entries {
				if !inside(e, m.root) || covered(e) {
					continue
				}
				out = append(out, loc{path: path.Join(p, rel(e, m.root)), m: m, d: e, isDir: m.fs.dirs[e], top: e == m.root})
			}
		} else if m.parent != nil && !covered(m.root) {
			out = append(out, loc{path: p, m: m, d: m.root, isDir: !m.isFile, top: true})
		}
		for _, c := range m.children {
			hidden := false
			for _, o := range m.children {
				if o != c && o.mp != c.mp && inside(c.mp, o.mp) {
					hidden = true
				}
			}
			if !hidden {
				walk(c, path.Join(p, rel(c.mp, m.root)))
			}
		}
	}
	walk(ns.root, "/")
	sort.SliceStable(out, func(i, j int) bool { return out[i].path < out[j].path })
	return out
}
