package restore

import (
	"errors"
	"fmt"
	"slices"

	"github.com/mntv2/mntv2/forest"
)

// A live restore finishes a tree that someone else (CRIU, given images
// stripped of sharing) has already restored, all private: it opens the
// restored mounts that take part in sharing, then runs the same sharing
// phase as a full restore, then unbindable. Nothing is created but helpers.
//
// Helpers cannot be bound from a live tree when no restored mount exposes
// the root a group needs (fixture 02: peers /x and /y, no mount of /), so
// LiveHelpers names them before the restore: extra mounts added to the
// images, each stacked on a leaf mount of its group, which CRIU restores
// with the rest. The live plan clones each one, detached, and unmounts it
// before any sharing exists, so it never shows in the result.

// LiveInput is what a live plan knows beyond the images.
type LiveInput struct {
	// Helpers are the mounts LiveHelpers added, by namespace and mount id.
	Helpers map[MountRef]bool
	// HostPaths gives, for an image mount restored from the host (an
	// external mount, the restore root), a path in the restorer's mount
	// namespace on which the host mount it was bound from lies: the host
	// side of external sharing and of external masters. NoHost says why
	// one has none.
	HostPaths map[MountRef]string
	NoHost    map[MountRef]string
	// HostPeers names the explicitly keyed external mounts whose host
	// mount is still in the peer group they hold: they were its peers.
	HostPeers map[MountRef]bool
	// Kept, when set, are the mounts CRIU restored (Reduce): the plan
	// makes the others (reduce and complete). Unset, CRIU restored every
	// mount of the images, without sharing.
	Kept map[MountRef]string
}

// MountRef names a mount of a forest.
type MountRef struct {
	NS    uint32 `json:"ns"`
	Mount uint32 `json:"mount"`
}

// NewLivePlan plans the sharing of a tree restored without it: in.Forest
// is the images' forest (with sharing) plus the helper mounts in
// in.Live.Helpers.
func NewLivePlan(in Input) (*Plan, error) {
	if in.Live == nil {
		in.Live = &LiveInput{}
	}
	p := newPlanner(in)
	p.indexDevs()
	for _, ns := range in.Forest.Namespaces {
		p.plan.Namespaces = append(p.plan.Namespaces, ns.ID)
	}
	// Helpers first, while everything is private: nothing propagates.
	p.walk(func(m *forest.Mount) {
		if !in.Live.Helpers[MountRef{m.NS.ID, m.ID}] {
			return
		}
		h := p.h(m)
		p.plan.Handles[h].Helper = true
		s := step(OpUnstack)
		s.NS, s.Mount, s.Handle = m.NS.ID, m.ID, h
		s.Why = "helper mount added to the images: keep a detached clone, unmount it from the tree"
		p.add(s)
		p.plan.Helpers++
	})
	if in.Live.Kept != nil {
		if err := p.complete(); err != nil {
			return nil, err
		}
		if err := errors.Join(p.errs...); err != nil {
			return nil, err
		}
	}
	p.walk(func(m *forest.Mount) {
		if _, kept := in.Live.Kept[MountRef{m.NS.ID, m.ID}]; m.IDMap != nil && (in.Live.Kept == nil || kept) {
			p.plan.Warnings = append(p.plan.Warnings, fmt.Sprintf("namespace %d, mount %d (%s) was idmapped (%s) and CRIU restored it plain: an idmap is set only before a mount is attached",
				m.NS.ID, m.ID, m.Mountpoint, m.IDMapString()))
		}
	})
	if err := p.sharing(); err != nil {
		return nil, err
	}
	if err := p.hostMasters(); err != nil {
		return nil, err
	}
	p.plan.Steps = append(p.plan.Steps, p.deletedSteps...)
	p.unbindable()
	p.lostFlags()
	for h, info := range p.plan.Handles {
		s := step(OpDrop)
		s.Handle, s.Why = Handle(h), p.whyf("done with %s", info.What)
		p.add(s)
	}
	// Opening comes first, all of a namespace at once: every switch
	// between a namespace's thread and this one costs a handover.
	slices.SortStableFunc(p.plan.Steps, func(a, b Step) int { return openRank(a) - openRank(b) })
	return p.plan, nil
}

func openRank(s Step) int {
	switch s.Op {
	case OpOpenLive:
		return 0
	case OpOpenHost:
		return 1
	}
	return 2
}

// h is the handle of mount m; a live plan opens the restored mount the
// first time it is needed.
func (p *planner) h(m *forest.Mount) Handle {
	if h, ok := p.handle[m]; ok || p.in.Live == nil {
		return h
	}
	h := p.newHandle(HandleInfo{NS: m.NS.ID, Mount: m.ID, Live: true, What: m.Mountpoint})
	p.handle[m] = h
	s := step(OpOpenLive)
	s.NS, s.Mount, s.Handle = m.NS.ID, m.ID, h
	s.Why = p.whyf("the restored mount %s", m.Describe())
	p.add(s)
	return h
}

// indexDevs lists the mounts of each superblock, namespace roots
// included: in a live plan any of them can be the source of a helper.
func (p *planner) indexDevs() {
	for _, ns := range p.in.Forest.Namespaces {
		_ = ns.Walk(func(m *forest.Mount) error {
			p.devMounts[m.Dev] = append(p.devMounts[m.Dev], m)
			return nil
		})
	}
}

// lostFlags plans the flags CRIU could not restore on the mounts it made
// (those CRIU's images cannot carry, known from mntv2's dump-side record:
// nosymfollow).
func (p *planner) lostFlags() {
	for _, ns := range p.in.Forest.Namespaces {
		_ = ns.Walk(func(m *forest.Mount) error {
			if m.Flags&forest.ImageLossy == 0 {
				return nil
			}
			if kept := p.in.Live.Kept; kept != nil {
				if _, ok := kept[MountRef{m.NS.ID, m.ID}]; !ok {
					return nil // made by complete, with its flags
				}
			}
			s := step(OpSetFlags)
			s.NS, s.Mount, s.Handle, s.Flags, s.Why = m.NS.ID, m.ID, p.h(m), m.Flags, p.whyf("per-mount flags %s, which CRIU's images lose", m.Flags)
			p.add(s)
			return nil
		})
	}
}

// walk calls fn for every non-root mount, namespace by namespace, parents
// first.
func (p *planner) walk(fn func(m *forest.Mount)) {
	for _, ns := range p.in.Forest.Namespaces {
		_ = ns.Walk(func(m *forest.Mount) error {
			if !m.IsRoot() {
				fn(m)
			}
			return nil
		})
	}
}

// unbindable plans MS_UNBINDABLE for the mounts the images mark so, after
// all sharing (an unbindable mount can be in no group).
func (p *planner) unbindable() {
	for _, ns := range p.in.Forest.Namespaces {
		_ = ns.Walk(func(m *forest.Mount) error {
			if m.Unbindable {
				s := step(OpMakeUnbindable)
				s.NS, s.Mount, s.Handle, s.Why = m.NS.ID, m.ID, p.h(m), "unbindable in the images"
				p.add(s)
			}
			return nil
		})
	}
}

// LiveHelpers lists the helper mounts a live restore of f needs: one per
// peer group whose representative needs a root that no mount of f exposes.
// Each is a bind of that root stacked on a leaf mount of the group, with a
// new mount id; the caller adds them to the images.
func LiveHelpers(f *forest.Forest) ([]HelperMount, error) {
	p := newPlanner(Input{Forest: f, Live: &LiveInput{}})
	p.indexDevs()
	order, _, err := p.analyzeSharing()
	if err != nil {
		return nil, err
	}
	nextID := map[uint32]uint32{}
	for _, ns := range f.Namespaces {
		for _, m := range ns.Mounts {
			nextID[ns.ID] = max(nextID[ns.ID], m.ID+1)
		}
	}
	var helpers []HelperMount
	for _, gp := range order {
		if p.hostPeers(gp) != nil || widestContaining(p.devMounts[gp.dev], gp.need) != nil {
			continue
		}
		var leaf *forest.Mount
		for _, m := range append(append([]*forest.Mount{}, gp.Members...), gp.Slaves...) {
			if len(m.Children) == 0 && m.Dev == gp.dev && !m.IsRoot() {
				leaf = m
				break
			}
		}
		if leaf == nil {
			m := gp.Members[0]
			return nil, &UnsupportedError{Mounts: []string{fmt.Sprintf(
				"namespace %d, mount %d (%s): peer group %d needs a helper mount of root %q, and none of its mounts is a leaf to stack it on",
				m.NS.ID, m.ID, m.Mountpoint, gp.ID, gp.need)}}
		}
		hm := forest.Mount{
			ID: nextID[leaf.NS.ID], ParentID: leaf.ID, Mountpoint: leaf.Mountpoint, Root: gp.need,
			FSType: leaf.FSType, FSCode: leaf.FSCode, Source: leaf.Source, Options: leaf.Options,
			Flags: leaf.Flags, Dev: leaf.Dev,
		}
		nextID[leaf.NS.ID]++
		helpers = append(helpers, HelperMount{NS: leaf.NS.ID, Group: gp.ID, Mount: hm})
		hcopy := hm
		p.devMounts[gp.dev] = append(p.devMounts[gp.dev], &hcopy)
	}
	return helpers, nil
}

// HelperMount is a mount a live restore adds to the images.
type HelperMount struct {
	NS    uint32       `json:"ns"`
	Group uint32       `json:"group"` // the peer group it helps
	Mount forest.Mount `json:"mount"`
}

// whyf formats a step's reason. A live plan runs inside CRIU's restore
// and is not printed unless asked (Input.Explain): its reasons stay the
// bare format, which saves a formatting per step of large trees.
func (p *planner) whyf(format string, args ...any) string {
	if p.in.Live != nil && !p.in.Explain {
		return format
	}
	return fmt.Sprintf(format, args...)
}

// LiveNamespace is a restored mount namespace a live plan acts on.
type LiveNamespace struct {
	// NSPath is an nsfs file of the namespace: /proc/PID/ns/mnt.
	NSPath string
	// Tree is the namespace as read before the plan runs.
	Tree *forest.Namespace
	// Mounts maps the image mount ids of the plan to the live mounts.
	Mounts map[uint32]*forest.Mount
}
