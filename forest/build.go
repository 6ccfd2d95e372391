package forest

import (
	"cmp"
	"errors"
	"fmt"
	"github.com/mntv2/mntv2/images"
	"slices"
	"strings"
)

// Problem is the kind of a validation error.
type Problem string

// The problems Build reports.
const (
	DuplicateID    Problem = "duplicate mount id"
	MissingParent  Problem = "missing parent"
	ParentCycle    Problem = "parent cycle"
	RootCount      Problem = "not exactly one root mount"
	MasterCycle    Problem = "master cycle"
	OutsideParent  Problem = "mountpoint outside its parent's subtree"
	SameMountpoint Problem = "two mounts on one mountpoint of one parent"
	BadPath        Problem = "bad path"
	NoNamespace    Problem = "no mounts"
	ZeroID         Problem = "mount id 0"
)

// ValidationError is one problem found in a forest, naming the namespace and
// the mount.
type ValidationError struct {
	Problem    Problem
	NS         uint32
	MountID    uint32 // 0 when the problem is the namespace's
	Mountpoint string
	Detail     string
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "mount namespace %d", e.NS)
	if e.MountID != 0 || e.Mountpoint != "" {
		fmt.Fprintf(&b, ", mount %d (%q)", e.MountID, e.Mountpoint)
	}
	fmt.Fprintf(&b, ": %s", e.Problem)
	if e.Detail != "" {
		b.WriteString(": " + e.Detail)
	}
	return b.String()
}

// maxProblems bounds how many problems one Build reports.
const maxProblems = 20

// NamespaceMounts is the input of Build: one namespace's mounts, any order.
type NamespaceMounts struct {
	ID     uint32
	Mounts []Mount
	// Recorded (images only): mntv2's dump-side record covers these
	// mounts, so a mount it gives no idmap was not idmapped.
	Recorded bool
	// Owner is the maps of the user namespace that owns the namespace,
	// nil for the reader's (or the dumper's) own; OwnerKnown says whether
	// Owner says anything.
	Owner      *images.IDMaps
	OwnerKnown bool
}

type problems struct{ errs []error }

func (p *problems) add(e *ValidationError) bool {
	if len(p.errs) < maxProblems {
		p.errs = append(p.errs, e)
	}
	return len(p.errs) < maxProblems
}

func (p *problems) full() bool { return len(p.errs) >= maxProblems }

func (p *problems) err() error { return errors.Join(p.errs...) }

// Build links mounts into a forest and validates it. Every error is a
// *ValidationError (joined with errors.Join when there are several, at most
// 20). Mount ids must be unique across the whole forest, as kernel mount ids
// are.
func Build(input []NamespaceMounts) (*Forest, error) {
	f := &Forest{}
	var p problems
	seen := map[uint32]uint32{} // mount id -> namespace
	for _, in := range input {
		ns := &Namespace{ID: in.ID, byID: make(map[uint32]*Mount, len(in.Mounts)), Owner: in.Owner, OwnerKnown: in.OwnerKnown}
		backing := make([]Mount, len(in.Mounts))
		copy(backing, in.Mounts)
		for i := range backing {
			m := &backing[i]
			m.NS, m.Parent, m.Children = ns, nil, nil
			if other, dup := seen[m.ID]; dup {
				if !p.add(&ValidationError{Problem: DuplicateID, NS: in.ID, MountID: m.ID, Mountpoint: m.Mountpoint,
					Detail: fmt.Sprintf("id %d is used again (first in namespace %d)", m.ID, other)}) {
					return nil, p.err()
				}
				continue
			}
			seen[m.ID] = in.ID
			ns.byID[m.ID] = m
			ns.Mounts = append(ns.Mounts, m)
		}
		f.Namespaces = append(f.Namespaces, ns)
	}
	if p.full() {
		return nil, p.err()
	}
	slices.SortFunc(f.Namespaces, func(a, b *Namespace) int { return cmp.Compare(a.ID, b.ID) })
	for i := 1; i < len(f.Namespaces); i++ {
		if f.Namespaces[i].ID == f.Namespaces[i-1].ID {
			p.add(&ValidationError{Problem: DuplicateID, NS: f.Namespaces[i].ID, Detail: "namespace given twice"})
		}
	}
	for _, ns := range f.Namespaces {
		linkNamespace(ns, &p)
	}
	checkMasters(f, &p)
	if err := p.err(); err != nil {
		return nil, err
	}
	return f, nil
}

func linkNamespace(ns *Namespace, p *problems) {
	if len(ns.Mounts) == 0 {
		p.add(&ValidationError{Problem: NoNamespace, NS: ns.ID, Detail: "the namespace has no mounts"})
		return
	}
	var roots []*Mount
	badPaths := false
	for _, m := range ns.Mounts {
		if err := checkPaths(m); err != "" {
			p.add(&ValidationError{Problem: BadPath, NS: ns.ID, MountID: m.ID, Mountpoint: m.Mountpoint, Detail: err})
			badPaths = true
			continue
		}
		if m.ID == 0 {
			// The kernel numbers mounts from 1, and 0 means "none" in
			// mntv2's plans (found by FuzzPlan).
			p.add(&ValidationError{Problem: ZeroID, NS: ns.ID, Mountpoint: m.Mountpoint, Detail: "mount ids start at 1"})
			badPaths = true // left unlinked: stop before walking the tree
			continue
		}
		parent, ok := ns.byID[m.ParentID]
		if !ok || m.ParentID == m.ID {
			roots = append(roots, m)
			continue
		}
		m.Parent = parent
		parent.Children = append(parent.Children, m)
	}
	// The root is the one parentless mount on "/"; any other parentless
	// mount has lost its parent.
	var top []*Mount
	for _, r := range roots {
		if r.Mountpoint == "/" {
			top = append(top, r)
		}
	}
	if len(top) != 1 {
		var names []string
		for _, r := range top {
			names = append(names, fmt.Sprintf("%d", r.ID))
		}
		detail := fmt.Sprintf("%d mounts on \"/\" without a parent in the namespace: %s", len(top), strings.Join(names, ", "))
		if len(roots) == 0 {
			detail = "every mount has a parent in the namespace"
		}
		p.add(&ValidationError{Problem: RootCount, NS: ns.ID, Detail: detail})
		if len(roots) == 0 {
			m := ns.Mounts[0]
			p.add(&ValidationError{Problem: ParentCycle, NS: ns.ID, MountID: m.ID, Mountpoint: m.Mountpoint,
				Detail: "its chain of parents never reaches a root"})
		}
		return
	}
	for _, r := range roots {
		if r != top[0] && !p.add(&ValidationError{Problem: MissingParent, NS: ns.ID, MountID: r.ID, Mountpoint: r.Mountpoint,
			Detail: fmt.Sprintf("parent %d is not a mount of the namespace", r.ParentID)}) {
			return
		}
	}
	if len(roots) > 1 || badPaths {
		return
	}
	ns.Root = roots[0]
	reached := make(map[*Mount]bool, len(ns.Mounts))
	for _, m := range ns.Mounts {
		// By mountpoint, then (mounts on one mountpoint are invalid
		// siblings) by id: ids are unique in a namespace.
		slices.SortFunc(m.Children, func(a, b *Mount) int {
			if c := strings.Compare(a.Mountpoint, b.Mountpoint); c != 0 {
				return c
			}
			return cmp.Compare(a.ID, b.ID)
		})
	}
	_ = ns.Walk(func(m *Mount) error {
		reached[m] = true
		if m.Parent == nil {
			return nil
		}
		if m.Mountpoint == m.Parent.Mountpoint {
			m.stack = m.Parent.stack + 1
		}
		if !under(m.Mountpoint, m.Parent.Mountpoint) {
			p.add(&ValidationError{Problem: OutsideParent, NS: ns.ID, MountID: m.ID, Mountpoint: m.Mountpoint,
				Detail: fmt.Sprintf("parent %d is mounted on %q", m.Parent.ID, m.Parent.Mountpoint)})
		}
		return nil
	})
	if len(reached) != len(ns.Mounts) {
		// Every mount has its parent in the namespace, so one the walk
		// from the root missed sits on or under a cycle: name one on it.
		for _, m := range ns.Mounts {
			if !reached[m] {
				m = onCycle(m)
				p.add(&ValidationError{Problem: ParentCycle, NS: ns.ID, MountID: m.ID, Mountpoint: m.Mountpoint,
					Detail: fmt.Sprintf("its chain of parents comes back to it (parent %d) and never reaches the root mount", m.ParentID)})
				break
			}
		}
		return
	}
	for _, m := range ns.Mounts {
		for i := 1; i < len(m.Children); i++ {
			if a, b := m.Children[i-1], m.Children[i]; a.Mountpoint == b.Mountpoint {
				p.add(&ValidationError{Problem: SameMountpoint, NS: ns.ID, MountID: b.ID, Mountpoint: b.Mountpoint,
					Detail: fmt.Sprintf("mounts %d and %d both have parent %d", a.ID, b.ID, m.ID)})
			}
		}
	}
}

// onCycle follows parents from m, which never reaches the root, until a
// mount comes round again: that mount is on the cycle.
func onCycle(m *Mount) *Mount {
	seen := map[*Mount]bool{}
	for !seen[m] && m.Parent != nil {
		seen[m] = true
		m = m.Parent
	}
	return m
}

// maxPath is PATH_MAX.
const maxPath = 4096

func checkPaths(m *Mount) string {
	for _, pp := range []struct{ what, path string }{{"mountpoint", m.Mountpoint}, {"root", m.Root}} {
		if msg := checkPath(pp.path); msg != "" {
			return fmt.Sprintf("%s %q: %s", pp.what, truncate(pp.path), msg)
		}
	}
	return ""
}

func checkPath(p string) string {
	switch {
	case len(p) > maxPath:
		return fmt.Sprintf("longer than %d bytes", maxPath)
	case strings.IndexByte(p, 0) >= 0:
		return "contains a NUL byte"
	case !strings.HasPrefix(p, "/"):
		return "not absolute"
	}
	if p == "/" {
		return ""
	}
	// Component by component, without allocating (every mountpoint and
	// root of a 10,000-mount tree passes here).
	for rest, more := p[1:], true; more; {
		var c string
		c, rest, more = strings.Cut(rest, "/")
		switch c {
		case "..":
			return `contains ".."`
		case ".", "":
			return "not clean (empty or \".\" component)"
		}
	}
	return ""
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// under says whether path p is dir or below it.
func under(p, dir string) bool {
	if dir == "/" || p == dir {
		return true
	}
	return strings.HasPrefix(p, dir) && p[len(dir)] == '/'
}

// checkMasters reports a peer group that is, through its masters, its own
// master. Groups are the nodes, each group has at most one master edge.
func checkMasters(f *Forest, p *problems) {
	master := map[uint32]uint32{}
	where := map[uint32]*Mount{}
	for _, ns := range f.Namespaces {
		for _, m := range ns.Mounts {
			if m.PeerGroup != 0 && m.Master != 0 {
				if m.PeerGroup == m.Master {
					p.add(&ValidationError{Problem: MasterCycle, NS: ns.ID, MountID: m.ID, Mountpoint: m.Mountpoint,
						Detail: fmt.Sprintf("peer group %d is its own master", m.PeerGroup)})
					return
				}
				master[m.PeerGroup] = m.Master
				where[m.PeerGroup] = m
			}
		}
	}
	const (
		unvisited = iota
		onPath
		done
	)
	state := map[uint32]int{}
	for start := range master {
		var path []uint32
		g := start
		for g != 0 && state[g] == unvisited {
			state[g] = onPath
			path = append(path, g)
			g = master[g]
		}
		if g != 0 && state[g] == onPath {
			m := where[g]
			p.add(&ValidationError{Problem: MasterCycle, NS: m.NS.ID, MountID: m.ID, Mountpoint: m.Mountpoint,
				Detail: fmt.Sprintf("peer group %d receives, through its masters, from itself", g)})
			return
		}
		for _, v := range path {
			state[v] = done
		}
	}
}

// WithoutSharing copies namespaces' mounts with no peer group, master or
// unbindable: the tree CRIU restores from images the hook has stripped.
func WithoutSharing(input []NamespaceMounts) []NamespaceMounts {
	out := make([]NamespaceMounts, len(input))
	for i, ns := range input {
		out[i] = NamespaceMounts{ID: ns.ID, Mounts: make([]Mount, len(ns.Mounts))}
		for j, m := range ns.Mounts {
			m.PeerGroup, m.Master, m.Unbindable = 0, 0, false
			out[i].Mounts[j] = m
		}
	}
	return out
}
