package forest

import (
	"fmt"

	"github.com/mntv2/mntv2/images"
)

// CRIU's fstype enum (images/mnt.proto) by value.
var criuFSTypes = map[uint32]string{
	1: "proc", 2: "sysfs", 3: "devtmpfs", 4: "binfmt_misc", 5: "tmpfs", 6: "devpts",
	7: "simfs", 8: "pstore", 9: "securityfs", 10: "fusectl", 11: "debugfs", 12: "cgroup",
	13: "aufs", 14: "mqueue", 15: "fuse", 17: "overlay", 18: "autofs", 19: "tracefs",
	23: "cgroup2",
}

// CRIU fstype codes with a special meaning.
const (
	criuFSUnsupported = 0
	criuFSFuse        = 15
	criuFSAuto        = 16 // the real name is in fsname
)

// FSTypeName gives the kernel's filesystem type name for a CRIU fstype code
// and fsname, or "" when the images do not say: CRIU writes every
// filesystem it has no code for (ext4, xfs, btrfs, nfs, ...) as
// UNSUPPORTED, code 0, and names only AUTO ones in fsname
// (criu/mount.c dump_one_mountpoint); a code it does not define reads as
// UNSUPPORTED too (criu/filesystems.c decode_fstype). Such a mount is
// restored as a bind from a mount of the same superblock, as CRIU does.
func FSTypeName(code uint32, fsname string) string {
	switch code {
	case criuFSAuto, criuFSUnsupported:
		return fsname
	case criuFSFuse:
		if fsname != "" {
			return fsname
		}
	}
	return criuFSTypes[code]
}

// IsUnsupportedCode says whether CRIU reads an fstype code as UNSUPPORTED.
func IsUnsupportedCode(code uint32) bool {
	return code != criuFSAuto && criuFSTypes[code] == ""
}

// FSTypeCode gives CRIU's fstype code for a filesystem type name: the enum
// value, or UNSUPPORTED (0) for a name CRIU has no code for, as CRIU's dump
// writes it without --enable-fs (criu/filesystems.c find_fstype_by_name).
func FSTypeCode(name string) uint32 {
	for code, n := range criuFSTypes {
		if n == name {
			return code
		}
	}
	return criuFSUnsupported
}

// FromImageMount converts one image entry.
func FromImageMount(e *images.Mount) Mount {
	m := Mount{
		ID: e.MntID, ParentID: e.ParentMntID,
		Mountpoint: e.Mountpoint, Root: e.Root,
		FSType: FSTypeName(e.FSType, e.FSName), FSCode: e.FSType,
		Source: e.Source, Options: e.Options,
		Flags: (Flags(e.Flags) & PerMountMask).AtimeMode(), Dev: e.RootDev,
		PeerGroup: e.SharedID, Master: e.MasterID,
		Unbindable: e.Flags&MSUnbindable != 0,
		External:   e.ExtKey, Deleted: e.Deleted, InternalSharing: e.InternalSharing,
		WithPlugin: e.WithPlugin,
	}
	if m.External == "" && e.ExtMount {
		m.External = "(external)"
	}
	return m
}

// FromImages builds the forest of every mountpoints-*.img in d.
func FromImages(d *images.Dir) (*Forest, error) {
	input, err := ImageNamespaces(d)
	if err != nil {
		return nil, err
	}
	f, err := BuildImages(input)
	if err != nil {
		return nil, fmt.Errorf("images %s: %w", d.Path(), err)
	}
	return f, nil
}

// ImageLossy are the per-mount flags CRIU's images cannot be trusted to
// carry: its dump drops nosymfollow.
const ImageLossy = NoSymFollow

// IDMapsUnknown, in a forest's Lossy, says its mounts' idmaps are unknown
// (images without mntv2's dump-side record): a found idmap is no
// difference. It is no per-mount flag (bit 31 is none).
const IDMapsUnknown Flags = 1 << 31

// BuildImages is Build for mounts read from images: the forest knows which
// flags its source loses (Forest.Lossy).
func BuildImages(input []NamespaceMounts) (*Forest, error) {
	f, err := Build(input)
	if err != nil {
		return nil, err
	}
	f.Lossy = ImageLossy
	for _, in := range input {
		if !in.Recorded {
			f.Lossy |= IDMapsUnknown
		}
	}
	return f, nil
}

// ImageNamespaces reads the mounts of every mountpoints-*.img in d, not yet
// linked into a forest.
func ImageNamespaces(d *images.Dir) ([]NamespaceMounts, error) {
	ids, err := d.MountNamespaces()
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("images %s: no mountpoints-*.img", d.Path())
	}
	input := make([]NamespaceMounts, 0, len(ids))
	for _, id := range ids {
		entries, err := d.Mounts(id)
		if err != nil {
			return nil, err
		}
		in := NamespaceMounts{ID: id, Mounts: make([]Mount, len(entries))}
		for i := range entries {
			in.Mounts[i] = FromImageMount(&entries[i])
		}
		input = append(input, in)
	}
	x, err := d.ReadExtra()
	if err != nil {
		return nil, err
	}
	ApplyExtra(input, x)
	if err := ApplyOwners(d, input); err != nil {
		return nil, err
	}
	return input, nil
}

// ApplyOwners sets the owner of each namespace of input whose tasks the
// images have (images.Dir.MountNamespaceOwners).
func ApplyOwners(d *images.Dir, input []NamespaceMounts) error {
	owners, err := d.MountNamespaceOwners()
	if err != nil {
		return err
	}
	for i := range input {
		if o, ok := owners[input[i].ID]; ok {
			input[i].Owner, input[i].OwnerKnown = o, true
		}
	}
	return nil
}

// ApplyExtra adds what mntv2's dump-side record (images.Extra) says the
// images' mounts had beyond their MntEntry: the per-mount flags CRIU's
// dump drops, and idmaps. It returns how many mounts it changed.
func ApplyExtra(input []NamespaceMounts, x *images.Extra) int {
	if x == nil {
		return 0
	}
	type ref struct{ ns, id uint32 }
	extra := make(map[ref]images.ExtraMount, len(x.Mounts))
	for _, m := range x.Mounts {
		extra[ref{m.NS, m.MntID}] = m
	}
	n := 0
	for i := range input {
		input[i].Recorded = true
		for j := range input[i].Mounts {
			m := &input[i].Mounts[j]
			e, ok := extra[ref{input[i].ID, m.ID}]
			if !ok {
				continue
			}
			if e.Flags != 0 {
				m.Flags = (m.Flags | Flags(e.Flags)&PerMountMask).AtimeMode()
			}
			if e.IDMap != nil {
				im := *e.IDMap
				m.IDMap = &im
			}
			if e.Flags != 0 || e.IDMap != nil {
				n++
			}
		}
	}
	return n
}

// ToImageMount converts a mount back to an image entry, as CRIU would write
// it: flags carry the propagation bits.
func ToImageMount(m *Mount) images.Mount {
	flags := uint32(m.Flags)
	// CRIU sets MS_SHARED, MS_SLAVE and MS_UNBINDABLE as they apply and
	// leaves a private mount with none of them.
	if m.PeerGroup != 0 {
		flags |= MSShared
	}
	if m.Master != 0 {
		flags |= MSSlave
	}
	if m.Unbindable {
		flags |= MSUnbindable
	}
	e := images.Mount{
		FSType: m.FSCode, MntID: m.ID, RootDev: m.Dev, ParentMntID: m.ParentID, Flags: flags,
		Root: m.Root, Mountpoint: m.Mountpoint, Source: m.Source, Options: m.Options,
		SharedID: m.PeerGroup, MasterID: m.Master, Deleted: m.Deleted, InternalSharing: m.InternalSharing,
		WithPlugin: m.WithPlugin,
	}
	if e.FSType == 0 && m.FSType != "" {
		e.FSType = FSTypeCode(m.FSType)
	}
	if e.FSType == criuFSAuto {
		e.FSName = m.FSType
	}
	if m.External != "" {
		e.ExtKey = m.External
	}
	return e
}

// ParseMountpoints reads the mounts of one mountpoints image held in
// memory, within lim.
func ParseMountpoints(data []byte, name string, lim images.Limits) ([]Mount, error) {
	img, err := images.Parse(data, name, images.Mountpoints, lim)
	if err != nil {
		return nil, err
	}
	return FromImage(img)
}

// FromImage is the mounts of a parsed mountpoints image, in its order.
func FromImage(img *images.Image) ([]Mount, error) {
	entries, err := img.Mounts()
	if err != nil {
		return nil, err
	}
	ms := make([]Mount, len(entries))
	for i := range entries {
		ms[i] = FromImageMount(&entries[i])
	}
	return ms, nil
}
