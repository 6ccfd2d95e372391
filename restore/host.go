package restore

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/mntv2/mntv2/forest"
)

// Sharing with the host: a mount of the images whose peer group or master
// lies outside them (external sharing, external masters: criu dump
// --enable-external-sharing, --enable-external-masters) joins the group of
// the host mount it is bound from, found by identity, never by the group's
// number, which the host may since have given to an unrelated mount. The
// host mount is the one on which a host path lies: an external mount's
// source (--ext-mount-map), or the restore root for a bind of it, as CRIU
// copies from (criu/mount-v2.c resolve_shared_mounts_v2: the external's
// source or opts.root). A live plan is given those paths (LiveInput.HostPaths)
// by its caller, who finds them in the restorer's namespace.

// hostAnchor is a handle of the host mount m copies its host-side sharing
// from, or NoHandle and why there is none. The candidates, in CRIU's order:
// m itself when external; an external mount of m's superblock whose root
// contains m's (with m's master, when a master is wanted); the restore root
// when m is a bind of it.
func (p *planner) hostAnchor(m *forest.Mount, master bool) (Handle, string) {
	var cands []*forest.Mount
	if m.External != "" {
		cands = append(cands, m)
	}
	for _, e := range p.extRoot[m.Dev] {
		if e != m && contains(e.Root, m.Root) && (!master || e.Master == m.Master) {
			cands = append(cands, e)
		}
	}
	if r := p.rootMnt; r != nil && r.Dev == m.Dev && contains(r.Root, m.Root) {
		cands = append(cands, r)
	}
	if len(cands) == 0 {
		return NoHandle, "it is neither external nor a bind of an external mount or of the restore root, so no host mount can be found to copy from (CRIU: \"unreachable sharing\")"
	}
	var why string
	for _, c := range cands {
		path, ok, reason := p.hostPath(c)
		if ok {
			return p.openHost(path, m), ""
		}
		if why == "" {
			why = reason
		}
	}
	return NoHandle, why
}

// hostPath is the host path of the mount c is bound from; "" is the
// restore root.
func (p *planner) hostPath(c *forest.Mount) (string, bool, string) {
	if p.in.Live != nil {
		if path, ok := p.in.Live.HostPaths[MountRef{c.NS.ID, c.ID}]; ok {
			return path, true, ""
		}
		if why := p.in.Live.NoHost[MountRef{c.NS.ID, c.ID}]; why != "" {
			return "", false, why
		}
		return "", false, fmt.Sprintf("no host mount of this host was found for mount %d (%s)", c.ID, c.Mountpoint)
	}
	if c == p.rootMnt {
		return "", true, ""
	}
	path, ok := p.externalPath(c)
	if !ok {
		return "", false, fmt.Sprintf("external mount %q has no --ext-mount-map entry", c.External)
	}
	return path, true, ""
}

// openHost is a handle of the host mount on which path lies ("": the
// restore root's), opened once.
func (p *planner) openHost(path string, for_ *forest.Mount) Handle {
	key := "host:" + path
	if h, ok := p.hostByPath[key]; ok {
		return h
	}
	what := "the host mount of " + path
	if path == "" {
		what = "the host mount of the restore root"
	}
	h := p.newHandle(HandleInfo{What: what})
	p.hostByPath[key] = h
	s := step(OpOpenHost)
	s.Handle, s.Path = h, path
	s.Why = fmt.Sprintf("the host side of the sharing of mount %d (%s): %s", for_.ID, for_.Mountpoint, what)
	p.add(s)
	return h
}

// hostPeers says whether gp is a peer group of the host: one of its
// members is an external mount that was in the host's group when dumped
// (CRIU marks one the container regrouped itself internal_sharing).
func hostPeers(gp *groupPlan) *forest.Mount {
	for _, m := range gp.Members {
		if m.External != "" && !m.InternalSharing {
			return m
		}
	}
	return nil
}

// noHost handles a group that cannot join the host group it had: an error,
// or with Input.HostLenient, a warning in the plan and the group restored
// among the images' mounts only.
func (p *planner) noHost(m *forest.Mount, what, why string) error {
	msg := fmt.Sprintf("namespace %d, mount %d (%s): %s: %s", m.NS.ID, m.ID, m.Mountpoint, what, why)
	if !p.in.HostLenient {
		return &UnsupportedError{Mounts: []string{msg}}
	}
	p.plan.Warnings = append(p.plan.Warnings, msg+"; restored without it (lenient)")
	return nil
}

// hostMasters plans the slave-only mounts of groups that are not in the
// images (external masters): each copies the host mount it is bound from,
// then becomes its slave.
func (p *planner) hostMasters() error {
	for _, g := range p.in.Forest.Groups() {
		if len(g.Members) > 0 {
			continue
		}
		for _, s := range g.Slaves {
			if s.PeerGroup != 0 {
				continue // its own group joins the host (planGroup)
			}
			host, why := p.hostAnchor(s, true)
			if host == NoHandle {
				if err := p.noHost(s, fmt.Sprintf("its master, peer group %d, is not in the images", g.ID), why); err != nil {
					return err
				}
				continue
			}
			p.setGroup(host, p.h(s), s, p.whyf("join the host mount's group, to become a slave of it (master %d when dumped)", g.ID))
			p.propagation(OpMakeSlave, p.h(s), s, p.whyf("slave of the host group (master %d when dumped)", g.ID))
		}
	}
	return nil
}

// HostPaths finds, for a live plan, the host side of every image mount of
// f restored from the host: each external mount, and the root namespace's
// root mount (the restore root). The host mount one was bound from has the
// superblock of the restored mount and a root containing its root (the
// kernel's own condition for copying a group); when the images name its
// host path (--ext-mount-map auto writes it as the source), it is the host
// mount on which that path lies. Only such a mount is taken, never one found
// by the group number the images hold. rootNS is the root task's namespace,
// live the restored mounts by image namespace and mount id, host the
// restorer's mounts.
func HostPaths(f *forest.Forest, rootNS uint32, live map[uint32]*LiveNamespace, host []forest.Mount) (paths, why map[MountRef]string) {
	paths, why = map[MountRef]string{}, map[MountRef]string{}
	if len(f.Namespaces) == 0 {
		return paths, why
	}
	root := rootNamespace(Input{Forest: f, RootNS: rootNS}).Root
	for _, ns := range f.Namespaces {
		for _, m := range ns.Mounts {
			if m.External == "" && m != root {
				continue
			}
			ref := MountRef{ns.ID, m.ID}
			dev, mroot := m.Dev, m.Root
			if ln := live[ns.ID]; ln != nil && ln.Mounts[m.ID] != nil {
				dev, mroot = ln.Mounts[m.ID].Dev, ln.Mounts[m.ID].Root
			}
			var cands []*forest.Mount
			for i := range host {
				if h := &host[i]; h.Dev == dev && contains(h.Root, mroot) {
					cands = append(cands, h)
				}
			}
			if want := autoHostPath(m); want != "" {
				on := mountOn(host, want)
				switch {
				case on == nil:
				case !slices.Contains(cands, on):
					why[ref] = fmt.Sprintf("the host mount %s (mount %d), on which its source %s lies, is not the one it was bound from (another superblock, or a root that does not contain %s)", on.Mountpoint, on.ID, want, mroot)
					continue
				case on.PeerGroup == 0 && on.Master == 0:
					why[ref] = fmt.Sprintf("the host mount %s (mount %d) it was bound from, at %s, is in no peer group and has no master now", on.Mountpoint, on.ID, want)
					continue
				default:
					paths[ref] = on.Mountpoint
					continue
				}
			}
			var inGroup []*forest.Mount
			for _, c := range cands {
				if c.PeerGroup != 0 || c.Master != 0 {
					inGroup = append(inGroup, c)
				}
			}
			switch {
			case len(cands) == 0:
				why[ref] = fmt.Sprintf("no mount of this host is on its superblock %s with a root containing %s", forest.DevString(dev), mroot)
			case len(inGroup) == 0:
				why[ref] = fmt.Sprintf("no mount of this host on its superblock %s with a root containing %s is in a peer group (the one it was bound from lost its group, or is gone)", forest.DevString(dev), mroot)
			case !sameSharing(inGroup):
				var at []string
				for _, c := range inGroup {
					at = append(at, c.Mountpoint)
				}
				why[ref] = fmt.Sprintf("the host mounts it may have been bound from are in different groups (%s), and the images do not say which", strings.Join(at, ", "))
			default:
				paths[ref] = inGroup[0].Mountpoint
			}
		}
	}
	return paths, why
}

// autoHostPath is the host path CRIU's --ext-mount-map auto recorded as an
// external mount's source, or "".
func autoHostPath(m *forest.Mount) string {
	if m.External != "CRIU:AUTOGENERATED" || !strings.HasPrefix(m.Source, "/") {
		return ""
	}
	return path.Clean(m.Source)
}

// mountOn is the mount of host on which path p lies: the topmost mount
// on the longest mountpoint that contains p (mountinfo lists a mount after
// the ones it covers).
func mountOn(host []forest.Mount, p string) *forest.Mount {
	var best *forest.Mount
	for i := range host {
		h := &host[i]
		if contains(h.Mountpoint, p) && (best == nil || len(h.Mountpoint) >= len(best.Mountpoint)) {
			best = h
		}
	}
	return best
}

// sameSharing says whether mounts are in one peer group with one master:
// any of them serves as the host side.
func sameSharing(ms []*forest.Mount) bool {
	for _, m := range ms[1:] {
		if m.PeerGroup != ms[0].PeerGroup || m.Master != ms[0].Master || m.PeerGroup == 0 && m.Master != ms[0].Master {
			return false
		}
	}
	return true
}

// NeedsHost says whether restoring f's sharing needs the host's side: a
// peer group of the host, or a master outside the images.
func NeedsHost(f *forest.Forest) bool {
	for _, g := range f.Groups() {
		if len(g.Members) == 0 {
			return true
		}
		for _, m := range g.Members {
			if m.External != "" && !m.InternalSharing {
				return true
			}
		}
	}
	return false
}
