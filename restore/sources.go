package restore

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/mntv2/mntv2/forest"
)

// Where each mount comes from. The planner is open-world, as CRIU is
// (criu/mount.c validate_mounts, criu/mount-v2.c do_mount_one_v2): a mount
// is made from, in this order,
//
//  1. the restore root, when it is on the root mount's superblock and its
//     root lies inside the root mount's (a bind of --root);
//  2. an external mount: a clone of its host path (--ext-mount-map);
//  3. an external mount of its superblock whose root contains its own;
//  4. a new instance of its filesystem, for the types CRIU creates fresh
//     (Fresh), with tmpfs content from the images;
//
// and anything else has no source: CRIU's dump writes a filesystem it has
// no code for (ext4, xfs, nfs, ...) as UNSUPPORTED and restores it only as
// a bind of 1 or 3. Any namespace's root mount is resolved the same way,
// but the root namespace's, which is the restore root itself.

// sourceKind says where a mount comes from.
type sourceKind uint8

const (
	fromRestoreRoot sourceKind = iota + 1 // a bind of the root mount of the root namespace
	fromHost                              // an external mount: a clone of a host path
	fromExternal                          // a bind of an external mount of its superblock
	fromNew                               // a bind of a new superblock
)

// source is where one mount comes from.
type source struct {
	kind sourceKind
	from *forest.Mount // fromRestoreRoot, fromExternal: the mount it is bound from
}

// FreshFS says, for each filesystem mntv2 creates new instances of, what
// the new instance holds, as CRIU restores it (criu/filesystems.c).
var FreshFS = map[string]string{
	"tmpfs":       "the content of tmpfs-dev-<dev>.tar.gz.img",
	"proc":        "the restorer's pid namespace",
	"sysfs":       "the restorer's network namespace",
	"devtmpfs":    "the kernel's devtmpfs (one instance per kernel)",
	"binfmt_misc": "no entries (CRIU 4.2 saves none)",
	"devpts":      "a new instance (newinstance)",
	"mqueue":      "no queues (CRIU dumps only an empty mqueue)",
	"pstore":      "the kernel's pstore",
	"securityfs":  "the kernel's securityfs",
	"debugfs":     "the kernel's debugfs (tracefs comes back under it)",
	"fusectl":     "the kernel's fusectl",
	"cgroup":      "the restorer's cgroup hierarchy for the dumped controllers",
	"cgroup2":     "the restorer's cgroup2 hierarchy",
	"overlay":     "the layer directories named in its options, as dumped",
}

// notFresh says why a filesystem CRIU knows is not made fresh.
var notFresh = map[string]string{
	"fuse":    "a fuse filesystem needs its daemon; CRIU restores it only as an external mount",
	"autofs":  "autofs needs its daemon's pipe, which CRIU restores with the tasks: restore it with CRIU and the mntv2 hook",
	"aufs":    "aufs is not in mainline Linux",
	"simfs":   "simfs exists only on OpenVZ kernels",
	"tracefs": "CRIU never writes tracefs to its images",
}

// resolveSources finds the source of every mount the plan creates, and
// lists every mount that has none.
func (p *planner) resolveSources() error {
	var bad []*forest.Mount
	why := map[*forest.Mount]string{}
	p.src = make(map[*forest.Mount]source, p.in.Forest.Len())
	p.eachCreated(func(m *forest.Mount) {
		s, reason := p.sourceOf(m)
		if reason != "" {
			bad, why[m] = append(bad, m), reason
			return
		}
		p.src[m] = s
	})
	if len(bad) == 0 {
		return nil
	}
	slices.SortFunc(bad, func(a, b *forest.Mount) int {
		return cmp.Or(cmp.Compare(a.NS.ID, b.NS.ID), cmp.Compare(a.ID, b.ID))
	})
	e := &UnsupportedError{}
	for _, m := range bad {
		e.Mounts = append(e.Mounts, fmt.Sprintf("namespace %d, mount %d (%s): %s", m.NS.ID, m.ID, m.Mountpoint, why[m]))
	}
	return e
}

// sourceOf is where m comes from, or why it cannot be made.
func (p *planner) sourceOf(m *forest.Mount) (source, string) {
	if m.External != "" {
		if _, ok := p.externalPath(m); !ok {
			return source{}, fmt.Sprintf("external mount %q has no --ext-mount-map entry (give --ext-mount-map %s:HOSTPATH, or auto for the same path on this host)", m.External, m.External)
		}
		return source{kind: fromHost}, ""
	}
	if m.WithPlugin {
		return source{}, "a CRIU plugin dumped this mount and only it can restore it (with_plugin): restore with CRIU and the mntv2 hook"
	}
	r := p.rootMnt
	if m.Dev == r.Dev && contains(r.Root, m.Root) {
		return source{kind: fromRestoreRoot, from: r}, ""
	}
	if e := widestContaining(p.extRoot[m.Dev], m.Root); e != nil {
		return source{kind: fromExternal, from: e}, ""
	}
	if m.Dev == r.Dev {
		return source{}, fmt.Sprintf("a mount of the restore root's filesystem, but its root %q is outside the root mount's %q, and no external mount of that superblock contains it", m.Root, r.Root)
	}
	fs := m.FSType
	if fs == "devpts" && isPty(m.Root) {
		return source{}, fmt.Sprintf("a bind of pty %s of a devpts instance: a pty exists only while its master is open, and the master is the restored tasks' terminal, which CRIU makes with them (criu/tty.c pty_create_ptmx_index): restore it with CRIU and the mntv2 hook", strings.TrimPrefix(m.Root, "/"))
	}
	if _, ok := FreshFS[fs]; ok || fs != "" && m.FSCode == autoCode {
		return source{kind: fromNew}, ""
	}
	if why := notFresh[fs]; why != "" {
		return source{}, why
	}
	name := "a filesystem CRIU has no type for (fstype UNSUPPORTED)"
	if fs != "" {
		name = fmt.Sprintf("filesystem %q, which CRIU has no type for (fstype UNSUPPORTED)", fs)
	}
	return source{}, fmt.Sprintf("%s on superblock %s: CRIU makes such a mount only as a bind of the restore root or of an external mount of the same superblock, and neither contains its root %q; mntv2 creates new instances only of %s (dump it as external, --external mnt[%s]:KEY, and restore with --ext-mount-map KEY:HOSTPATH)",
		name, forest.DevString(m.Dev), m.Root, freshList(), m.Mountpoint)
}

// isPty says whether a devpts root is a pty (/N), not the root or ptmx.
func isPty(root string) bool {
	n := strings.TrimPrefix(root, "/")
	if n == "" || n == root {
		return false
	}
	for _, c := range n {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// autoCode is CRIU's FSTYPE__AUTO: a filesystem named in fsname, mounted
// fresh with its dumped options (criu --enable-fs).
const autoCode = 16

func freshList() string {
	names := make([]string, 0, len(FreshFS))
	for n := range FreshFS {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// eachCreated calls fn for every mount the plan creates: every mount but
// the root namespace's root (the restore root itself), namespace by
// namespace, parents first.
func (p *planner) eachCreated(fn func(m *forest.Mount)) {
	for _, ns := range p.in.Forest.Namespaces {
		_ = ns.Walk(func(m *forest.Mount) error {
			if m != p.rootMnt {
				fn(m)
			}
			return nil
		})
	}
}

// rootNamespace is the namespace whose root mount is the restore root: the
// root task's (Input.RootNS), else the first.
func rootNamespace(in Input) *forest.Namespace {
	if ns := in.Forest.Namespace(in.RootNS); ns != nil {
		return ns
	}
	return in.Forest.Namespaces[0]
}

// cgroupV1Controllers are the controllers a cgroup v1 hierarchy can have.
var cgroupV1Controllers = map[string]bool{
	"cpuset": true, "cpu": true, "cpuacct": true, "blkio": true, "memory": true, "devices": true,
	"freezer": true, "net_cls": true, "perf_event": true, "net_prio": true, "hugetlb": true,
	"pids": true, "rdma": true, "misc": true, "debug": true,
}

// fsOptions are the options a new instance of m's filesystem is made with:
// its superblock options as dumped, but for a named cgroup v1 hierarchy
// without controllers, which mountinfo shows as "name=X" and must be made
// with "none" too (without it the kernel takes every controller, and says
// EBUSY: they are in other hierarchies; CRIU 4.2 fails there).
func fsOptions(m *forest.Mount) string {
	if m.FSType != "cgroup" || !strings.Contains(m.Options, "name=") {
		return m.Options
	}
	for _, o := range strings.Split(m.Options, ",") {
		if cgroupV1Controllers[o] || o == "none" {
			return m.Options
		}
	}
	return "none," + m.Options
}
