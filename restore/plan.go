// Package restore rebuilds the mount namespaces described by CRIU images the
// mount-v2 way: every mount is created private and detached, the trees are
// assembled with move_mount, then peer groups and masters are copied with
// MOVE_MOUNT_SET_GROUP, master before slave, and last come unbindable and
// the per-mount flags.
//
// Planning is pure (Plan: a forest in, ordered steps out, each with the
// reason it exists); only Apply touches the kernel.
package restore

import (
	"fmt"
	"github.com/mntv2/mntv2/images"
	"strings"

	"github.com/mntv2/mntv2/forest"
)

// Op is what a step does.
type Op string

// The steps of a plan, in the order their phases run.
const (
	OpCreateNamespace Op = "create-namespace" // new mount namespace whose root mount is a bind of the restore root
	OpNewSuperblock   Op = "new-superblock"   // fsopen + fsconfig + fsmount: a detached mount of a new filesystem
	OpFillTmpfs       Op = "fill-tmpfs"       // extract tmpfs-dev-<dev>.tar.gz.img into a new tmpfs
	OpOpenExternal    Op = "open-external"    // open_tree(OPEN_TREE_CLONE) of a host path, made private
	OpBind            Op = "bind"             // open_tree(OPEN_TREE_CLONE) of a path inside another handle's mount
	OpAttach          Op = "attach"           // move_mount a detached mount onto its mountpoint, inside its namespace
	OpSetGroup        Op = "set-group"        // move_mount(MOVE_MOUNT_SET_GROUP): copy peer group and master
	OpMakeSlave       Op = "make-slave"       // MS_SLAVE
	OpMakeShared      Op = "make-shared"      // MS_SHARED
	OpMakeUnbindable  Op = "make-unbindable"  // MS_UNBINDABLE
	OpSetFlags        Op = "set-flags"        // mount_setattr: the per-mount flags, inside the namespace
	OpSetIDMap        Op = "set-idmap"        // mount_setattr(MOUNT_ATTR_IDMAP) of a detached mount, never attached yet
	OpRemoveDeleted   Op = "remove-deleted"   // remove the root made again for a deleted-root bind, once the sharing is done
	OpDrop            Op = "drop"             // close a handle that is no mount of the result (a source or helper)
	OpPin             Op = "pin"              // keep the namespace alive as PIN/mntns-<ID>

	// Live plans (a tree restored by someone else, without sharing).
	OpOpenLive Op = "open-live" // an fd of a restored mount, inside its namespace
	OpUnstack  Op = "unstack"   // a helper mount in the tree: keep a detached private clone, unmount it
	OpOpenHost Op = "open-host" // an fd of a host mount (external sharing, external masters)
)

// Handle numbers the mounts a plan creates: image mounts, superblock sources
// and helpers. The applier keeps one fd per handle.
type Handle int

// NoHandle marks an unused handle field.
const NoHandle Handle = -1

// Step is one action of a plan.
type Step struct {
	Op     Op     `json:"op"`
	NS     uint32 `json:"ns,omitempty"`    // namespace the step runs in or is for
	Mount  uint32 `json:"mount,omitempty"` // image mount id the step is for; 0 for sources and helpers
	Handle Handle `json:"handle"`          // the handle the step creates or acts on
	From   Handle `json:"from"`            // bind, set-group: the source handle
	Parent Handle `json:"parent"`          // attach: the mount to attach under

	// Path: bind: path inside From's mount ("" for its root); attach: the
	// mountpoint relative to Parent's root ("" to stack on it);
	// open-external: the host path.
	Path string `json:"path,omitempty"`

	FSType     string       `json:"fstype,omitempty"` // new-superblock
	Source     string       `json:"source,omitempty"` // new-superblock
	Options    string       `json:"options,omitempty"`
	Dev        uint32       `json:"dev,omitempty"`   // new-superblock, fill-tmpfs: the image's superblock
	Flags      forest.Flags `json:"flags,omitempty"` // set-flags
	ReadOnlySB bool         `json:"ro_sb,omitempty"` // new-superblock: superblock read-only

	// Persistent (attach): the mountpoint lies on a filesystem that outlives
	// the restore (the restore root or an external mount), so a mountpoint
	// created there must be removed again on rollback.
	Persistent bool `json:"persistent,omitempty"`

	// Deleted (bind): the mount's root was deleted; it is made again at
	// Path in From (a directory, or a file when the mountpoint, Target in
	// Parent, is one), bound, and removed after the sharing, as CRIU does
	// (criu/mount-v2.c do_bind_mount_v2, remove_source_of_deleted_mount).
	Deleted bool   `json:"deleted,omitempty"`
	Target  string `json:"target,omitempty"`

	// InNS (new-superblock): made by NS's thread, once its other mounts
	// are attached: an overlay's options name its layers by path, which
	// are looked up inside the namespace being restored, never on the
	// host.
	InNS bool `json:"in_ns,omitempty"`

	// IDMap: set-idmap: the maps the mount gets; fill-tmpfs: the maps of
	// the idmapped mount CRIU archived the content through.
	IDMap *images.IDMaps `json:"idmap,omitempty"`

	// Owner (fill-tmpfs): the maps of the user namespace CRIU archived
	// the content in (the root task's, when it had one of its own): the
	// archive's owners are ids of that namespace.
	Owner *images.IDMaps `json:"owner,omitempty"`

	// UserNS: create-namespace: the namespace is owned by the user
	// namespace Options.UserNS (the images' was owned by the container's);
	// new-superblock: the superblock is owned by the user namespace that
	// owns NS (Options.UserNS, or the live namespace's owner), as one the
	// container made (CRIU makes every mount inside the root task's user
	// namespace).
	UserNS bool `json:"userns,omitempty"`

	// AsRoot (fill-tmpfs): the superblock is owned by the user namespace
	// of these maps, and the extraction runs as its root (filesystem ids).
	AsRoot *images.IDMaps `json:"as_root,omitempty"`

	Why string `json:"why"`
}

func (s Step) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-16s", s.Op)
	if s.NS != 0 {
		fmt.Fprintf(&b, " ns=%d", s.NS)
	}
	if s.Handle != NoHandle {
		fmt.Fprintf(&b, " h%d", s.Handle)
	}
	if s.Mount != 0 {
		fmt.Fprintf(&b, "(mnt %d)", s.Mount)
	}
	if s.From != NoHandle {
		fmt.Fprintf(&b, " from=h%d", s.From)
	}
	if s.Parent != NoHandle {
		fmt.Fprintf(&b, " under=h%d", s.Parent)
	}
	if s.Op == OpAttach || s.Op == OpBind || s.Op == OpOpenExternal || s.Op == OpOpenHost || s.Op == OpRemoveDeleted {
		fmt.Fprintf(&b, " path=%q", s.Path)
	}
	if s.Deleted {
		fmt.Fprintf(&b, " deleted target=%q", s.Target)
	}
	if s.FSType != "" {
		fmt.Fprintf(&b, " %s source=%q options=%q", s.FSType, s.Source, s.Options)
	}
	if s.Op == OpSetFlags {
		fmt.Fprintf(&b, " %s", s.Flags)
	}
	fmt.Fprintf(&b, "  # %s", s.Why)
	return b.String()
}

// HandleInfo says what a handle is.
type HandleInfo struct {
	NS     uint32 `json:"ns,omitempty"`
	Mount  uint32 `json:"mount,omitempty"` // image mount id; 0 for a source or helper
	Helper bool   `json:"helper,omitempty"`
	Root   bool   `json:"root,omitempty"` // a namespace's root mount (bind of the restore root)
	Live   bool   `json:"live,omitempty"` // a mount of a restored tree (live plans)
	What   string `json:"what"`
}

// Plan is the ordered list of steps that restores a forest.
type Plan struct {
	Namespaces []uint32     `json:"namespaces"`
	Handles    []HandleInfo `json:"handles"`
	Steps      []Step       `json:"steps"`
	Helpers    int          `json:"helpers"`
	// Warnings are what the plan restores less exactly than the images
	// say, and why (Input.HostLenient).
	Warnings []string `json:"warnings,omitempty"`
	// Owners are the maps of the user namespaces that owned the images'
	// namespaces, where a container's did: those are made owned by
	// Options.UserNS.
	Owners map[uint32]*images.IDMaps `json:"owners,omitempty"`
}

// Input is everything the planner needs to know.
type Input struct {
	Forest *forest.Forest
	// External maps an external mount's key to the host path to bind. Auto
	// maps every key not in External to the mount's own path on this host
	// (CRIU's --ext-mount-map auto).
	External map[string]string
	Auto     bool
	// TmpfsContent says which superblocks (root_dev) have a
	// tmpfs-dev-<dev>.tar.gz.img.
	TmpfsContent map[uint32]bool
	// RootNS is the mount namespace of the root task (pstree's first task):
	// its root mount is the restore root. When the forest has no such
	// namespace, the first one is.
	RootNS uint32
	// Live is set for a live plan (NewLivePlan).
	Live *LiveInput
	// Explain gives a live plan's steps their full reasons.
	Explain bool
	// HostLenient restores a group whose host group cannot be joined (its
	// host mount is gone or in no group) among the images' mounts only,
	// with a warning in the plan, instead of failing.
	HostLenient bool
}

// UnsupportedError lists every mount that cannot be restored, before anything
// is changed.
type UnsupportedError struct {
	Mounts []string // "namespace 10, mount 45 (/tmp/x): ext4 is not supported"
}

func (e *UnsupportedError) Error() string {
	const shown = 10
	if len(e.Mounts) <= shown {
		return fmt.Sprintf("%d mounts cannot be restored: %s", len(e.Mounts), strings.Join(e.Mounts, "; "))
	}
	return fmt.Sprintf("%d mounts cannot be restored: %s; and %d more", len(e.Mounts), strings.Join(e.Mounts[:shown], "; "), len(e.Mounts)-shown)
}
