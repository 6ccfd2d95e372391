package forest

import (
	"cmp"
	"github.com/mntv2/mntv2/images"
	"slices"
	"strconv"
	"strings"
)

// Flags are the per-mount flags (not the superblock's), as MS_* bits.
type Flags uint32

// Per-mount MS_* flags from <linux/mount.h>. Only these are compared and
// restored; the rest of an image's flags word is propagation or superblock
// state.
const (
	ReadOnly    Flags = 1       // MS_RDONLY
	NoSuid      Flags = 2       // MS_NOSUID
	NoDev       Flags = 4       // MS_NODEV
	NoExec      Flags = 8       // MS_NOEXEC
	NoSymFollow Flags = 256     // MS_NOSYMFOLLOW
	NoAtime     Flags = 1024    // MS_NOATIME
	NoDiratime  Flags = 2048    // MS_NODIRATIME
	Relatime    Flags = 1 << 21 // MS_RELATIME
	StrictAtime Flags = 1 << 24 // MS_STRICTATIME

	PerMountMask = ReadOnly | NoSuid | NoDev | NoExec | NoSymFollow | NoAtime | NoDiratime | Relatime | StrictAtime
)

// Propagation MS_* bits as they appear in an image's flags word.
const (
	MSUnbindable = 1 << 17
	MSPrivate    = 1 << 18
	MSSlave      = 1 << 19
	MSShared     = 1 << 20
)

var flagNames = []struct {
	f    Flags
	name string
}{
	{ReadOnly, "ro"}, {NoSuid, "nosuid"}, {NoDev, "nodev"}, {NoExec, "noexec"},
	{NoSymFollow, "nosymfollow"}, {NoAtime, "noatime"}, {NoDiratime, "nodiratime"},
	{Relatime, "relatime"}, {StrictAtime, "strictatime"},
}

// String gives the flags as mountinfo writes them: "rw" or "ro", then the rest.
func (f Flags) String() string {
	parts := []string{"rw"}
	for _, fn := range flagNames {
		if f&fn.f == 0 {
			continue
		}
		if fn.f == ReadOnly {
			parts[0] = "ro"
		} else {
			parts = append(parts, fn.name)
		}
	}
	return strings.Join(parts, ",")
}

// ParseFlags reads mountinfo's per-mount options ("rw,nosuid,relatime").
// Unknown words are ignored: they are not per-mount flags. The atime mode
// is normalized (see AtimeMode): mountinfo shows "relatime", "noatime" or
// neither, which is strictatime.
func ParseFlags(s string) Flags {
	var f Flags
	for w, rest, more := "", s, true; more; {
		w, rest, more = strings.Cut(rest, ",")
		for _, fn := range flagNames {
			if w == fn.name {
				f |= fn.f
			}
		}
	}
	return f.AtimeMode()
}

// atimeMask is the three atime modes a mount has exactly one of.
const atimeMask = NoAtime | Relatime | StrictAtime

// AtimeMode gives f with exactly one atime mode, as the kernel keeps it
// (MNT_NOATIME, MNT_RELATIME, or neither: strictatime): noatime wins over
// relatime, and neither shown means strictatime. mountinfo never prints
// "strictatime" (fs/proc_namespace.c show_mnt_opts) and CRIU writes
// MS_STRICTATIME for "neither" (criu/proc_parse.c parse_mnt_flags), so
// flags from both sides compare equal once normalized.
func (f Flags) AtimeMode() Flags {
	switch {
	case f&NoAtime != 0:
		return f&^atimeMask | NoAtime
	case f&Relatime != 0:
		return f&^atimeMask | Relatime
	}
	return f&^atimeMask | StrictAtime
}

// Mount is one mount of a namespace. The same type describes a mount read
// from CRIU images and one read from a live system.
type Mount struct {
	ID       uint32 // mount id (image mnt_id or live mount id)
	ParentID uint32

	Mountpoint string // absolute path as seen in its namespace
	Root       string // path inside the filesystem that is the mount's root
	FSType     string // "tmpfs", "proc", ...; "" when unknown (external mounts)
	Source     string
	Options    string // superblock options
	Flags      Flags  // per-mount flags
	Dev        uint32 // superblock identity: kdev_t, major<<20 | minor

	PeerGroup     uint32 // shared:N, 0 when not shared
	Master        uint32 // master:N, 0 when not a slave
	PropagateFrom uint32 // propagate_from:N (live only; informative)
	Unbindable    bool

	External string // CRIU ext_key: bound from the restoring host; "" if not
	// InternalSharing: an external mount whose peer group the container
	// made its own (CRIU's internal_sharing); otherwise an external mount's
	// peer group is the host's.
	InternalSharing bool
	Deleted         bool // the mount's root was unlinked
	// WithPlugin: a CRIU plugin dumped the mount and restores it
	// (with_plugin; criu/mount.c, the DUMP_EXT_MOUNT hook).
	WithPlugin bool
	// IDMap is an idmapped mount's uid and gid maps (nil: not idmapped):
	// live from statmount; for images from mntv2's dump-side record
	// (CRIU's images do not say). Empty maps: idmapped, maps unknown.
	IDMap *images.IDMaps

	// FSCode is CRIU's fstype enum value for image mounts, 0 for live ones.
	FSCode uint32

	Parent   *Mount   // nil for a namespace's root
	Children []*Mount // ordered by mountpoint; see Namespace.Walk
	NS       *Namespace
	stack    int // set by Build: see StackLevel
}

// IsRoot says whether m is its namespace's root mount.
func (m *Mount) IsRoot() bool { return m.Parent == nil }

// Overmount returns the mount stacked directly on top of m (a child mounted
// on m's own mountpoint), or nil.
func (m *Mount) Overmount() *Mount {
	for _, c := range m.Children {
		if c.Mountpoint == m.Mountpoint {
			return c
		}
	}
	return nil
}

// StackLevel is 0 for a mount that sits on its parent's directory and n for
// the n-th mount stacked on the same mountpoint.
func (m *Mount) StackLevel() int { return m.stack }

// Describe names a mount for messages: "/tmp/s" or "/tmp/s (stacked 2)".
func (m *Mount) Describe() string {
	if l := m.StackLevel(); l > 0 {
		return m.Mountpoint + " (stacked " + strconv.Itoa(l) + ")"
	}
	return m.Mountpoint
}

// Namespace is one mount namespace: a tree of mounts.
type Namespace struct {
	ID     uint32
	Root   *Mount
	Mounts []*Mount // every mount, in input order
	byID   map[uint32]*Mount
	// Owner: see NamespaceMounts.
	Owner      *images.IDMaps
	OwnerKnown bool
}

// OwnerString says which user namespace owns ns: "" for the reader's own,
// else its maps ("u:0:100000:65536,g:0:100000:65536").
func (ns *Namespace) OwnerString() string {
	if ns.Owner == nil {
		return ""
	}
	return strings.ReplaceAll(ns.Owner.String(), " ", ",")
}

// Mount returns the mount with the given id, or nil.
func (ns *Namespace) Mount(id uint32) *Mount { return ns.byID[id] }

// Walk calls fn for every mount, parents before children, children in
// mountpoint order (a stacked mount after the one it covers). It stops at the
// first error and returns it. It does not recurse, so deep trees are fine.
func (ns *Namespace) Walk(fn func(*Mount) error) error {
	if ns.Root == nil {
		return nil
	}
	stack := []*Mount{ns.Root}
	for len(stack) > 0 {
		m := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if err := fn(m); err != nil {
			return err
		}
		for i := len(m.Children) - 1; i >= 0; i-- {
			stack = append(stack, m.Children[i])
		}
	}
	return nil
}

// Forest is a set of mount namespaces whose mounts may share peer groups.
type Forest struct {
	Namespaces []*Namespace // ordered by ID
	// Lossy are the flags the forest's source may have dropped: a mount
	// without one of them may have had it (CRIU's dump never records
	// nosymfollow: criu/proc_parse.c parse_mnt_flags).
	Lossy Flags
}

// Namespace returns the namespace with the given id, or nil.
func (f *Forest) Namespace(id uint32) *Namespace {
	for _, ns := range f.Namespaces {
		if ns.ID == id {
			return ns
		}
	}
	return nil
}

// Len is the number of mounts in all namespaces.
func (f *Forest) Len() int {
	n := 0
	for _, ns := range f.Namespaces {
		n += len(ns.Mounts)
	}
	return n
}

// Only returns a forest with just the namespaces named (same mounts, shared).
func (f *Forest) Only(ids ...uint32) *Forest {
	out := &Forest{Lossy: f.Lossy}
	for _, id := range ids {
		if ns := f.Namespace(id); ns != nil {
			out.Namespaces = append(out.Namespaces, ns)
		}
	}
	return out
}

// Group is a peer group: its id and members across namespaces.
type Group struct {
	ID      uint32
	Members []*Mount // in forest walk order
	Master  uint32   // the peer group the members receive from, 0 if none
	Slaves  []*Mount // mounts (in any group or none) whose Master is ID
}

// Groups lists the peer groups of the forest, and the master-only groups
// (groups that have slaves but no member here, such as an external master),
// ordered by id.
func (f *Forest) Groups() []*Group {
	byID := map[uint32]*Group{}
	get := func(id uint32) *Group {
		g := byID[id]
		if g == nil {
			g = &Group{ID: id}
			byID[id] = g
		}
		return g
	}
	for _, ns := range f.Namespaces {
		_ = ns.Walk(func(m *Mount) error {
			if m.PeerGroup != 0 {
				g := get(m.PeerGroup)
				g.Members = append(g.Members, m)
				if g.Master == 0 {
					g.Master = m.Master
				}
			}
			if m.Master != 0 {
				get(m.Master).Slaves = append(get(m.Master).Slaves, m)
			}
			return nil
		})
	}
	out := make([]*Group, 0, len(byID))
	for _, g := range byID {
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b *Group) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// IDMapString is the mount's idmap as TextLine shows it ("" if none).
func (m *Mount) IDMapString() string {
	switch {
	case m.IDMap == nil:
		return ""
	case len(m.IDMap.UID) == 0 && len(m.IDMap.GID) == 0:
		return "idmapped"
	}
	return "idmap=" + strings.ReplaceAll(m.IDMap.String(), " ", ",")
}
