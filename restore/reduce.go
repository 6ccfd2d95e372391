package restore

import (
	"fmt"
	"strings"

	"github.com/mntv2/mntv2/forest"
)

// Reduce and complete: unmodified CRIU cannot be told to skip its mount
// restore, but it can be given fewer mounts. The hook's pre-restore leaves
// CRIU the kept set (Reduce), and its post-restore makes the rest (a live
// plan with Input.Live.Kept) at the standalone engine's speed.

// keptFS are the filesystems CRIU must mount itself: from the restored root
// task, so in its pid, net, ipc and cgroup namespaces (proc, sysfs, mqueue,
// cgroup), with state only CRIU restores (devpts's ptys bound elsewhere,
// binfmt_misc's entries, autofs's pipe), or that are the kernel's own
// (devtmpfs) or a daemon's (fuse). An overlay is not: CRIU resolves its
// layers' paths on the host, before the layers exist (a container's own
// overlay fails there); mntv2 makes it inside the namespace, after them.
var keptFS = map[string]string{
	"proc": "proc is mounted in the restored pid namespace", "sysfs": "sysfs is mounted in the restored network namespace",
	"mqueue": "mqueue is mounted in the restored ipc namespace", "cgroup": "cgroup is mounted in the restored cgroup namespace",
	"cgroup2": "cgroup2 is mounted in the restored cgroup namespace", "devpts": "CRIU makes the ptys of devpts",
	"binfmt_misc": "CRIU registers binfmt_misc's entries", "autofs": "autofs needs the pipe CRIU restores",
	"devtmpfs": "devtmpfs is the kernel's", "fuse": "fuse is a daemon's",
}

// Reduction is the set of mounts CRIU restores itself, with the reason
// each is kept.
type Reduction struct {
	Kept map[MountRef]string
	// Dropped counts the mounts left to the hook.
	Dropped int
}

// Reduce computes what CRIU must restore itself of f: every namespace's
// root; every mount an image record names (refs: mount ids, and the
// superblocks of fsnotify marks CRIU reopens by handle); the filesystems
// CRIU mounts itself (keptFS, FSTYPE__AUTO, with_plugin, external mounts
// with a key of their own); then, until nothing changes, the parent of a
// kept mount, a mount a kept mount covers (it must exist before what covers
// it), and for a kept mount that CRIU binds from another of its superblock
// (not the root of it, nor the restore root's or an external's), the
// widest such mount.
func Reduce(f *forest.Forest, rootNS uint32, ids map[uint32]string, devs map[uint32]string) Reduction {
	r := Reduction{Kept: map[MountRef]string{}}
	byID := map[uint32]*forest.Mount{}
	bySB := map[uint32][]*forest.Mount{}
	var queue []*forest.Mount
	keep := func(m *forest.Mount, why string) {
		ref := MountRef{m.NS.ID, m.ID}
		if _, ok := r.Kept[ref]; !ok {
			r.Kept[ref] = why
			queue = append(queue, m)
		}
	}
	for _, ns := range f.Namespaces {
		_ = ns.Walk(func(m *forest.Mount) error {
			byID[m.ID] = m
			bySB[m.Dev] = append(bySB[m.Dev], m)
			return nil
		})
	}
	root := rootNamespace(Input{Forest: f, RootNS: rootNS}).Root
	for _, ns := range f.Namespaces {
		keep(ns.Root, "a namespace's root")
		_ = ns.Walk(func(m *forest.Mount) error {
			switch why := keptFS[m.FSType]; {
			case why != "":
				keep(m, why)
			case m.FSCode == autoCode:
				keep(m, "CRIU mounts an --enable-fs filesystem with its options")
			case m.WithPlugin:
				keep(m, "a CRIU plugin restores it")
			case m.External != "" && m.External != autoExternal:
				keep(m, fmt.Sprintf("external mount %q: only CRIU knows its host path", m.External))
			}
			if why, ok := devs[m.Dev]; ok {
				keep(m, why)
			}
			return nil
		})
	}
	for id, why := range ids {
		if m := byID[id]; m != nil {
			keep(m, why)
		}
	}
	for len(queue) > 0 {
		m := queue[0]
		queue = queue[1:]
		if m.Parent != nil {
			keep(m.Parent, fmt.Sprintf("the parent of kept mount %d", m.ID))
			for _, sib := range m.Parent.Children {
				if sib != m && strings.HasPrefix(sib.Mountpoint, strings.TrimSuffix(m.Mountpoint, "/")+"/") {
					keep(sib, fmt.Sprintf("covered by kept mount %d", m.ID))
				}
			}
		}
		if src := bindSource(m, root, bySB[m.Dev], r.Kept); src != nil {
			keep(src, fmt.Sprintf("CRIU binds kept mount %d from it", m.ID))
		}
	}
	r.Dropped = f.Len() - len(r.Kept)
	return r
}

// bindSource is the mount CRIU needs mounted before m, when m is a bind
// of another mount of its superblock and none kept contains its root
// (criu/mount-v2.c can_mount_now_v2): the widest mount of the superblock
// whose root contains m's; nil when CRIU needs none.
func bindSource(m, root *forest.Mount, sb []*forest.Mount, kept map[MountRef]string) *forest.Mount {
	if m.Root == "/" || m.External != "" || m.IsRoot() || m.Dev == root.Dev && contains(root.Root, m.Root) {
		return nil
	}
	var best *forest.Mount
	for _, o := range sb {
		if o == m || !contains(o.Root, m.Root) {
			continue
		}
		if _, ok := kept[MountRef{o.NS.ID, o.ID}]; ok {
			return nil
		}
		if best == nil || len(o.Root) < len(best.Root) {
			best = o
		}
	}
	return best
}
