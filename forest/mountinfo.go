package forest

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/mntv2/mntv2/images"
	"github.com/moby/sys/mountinfo"
)

// deletedSuffix is how mountinfo marks a mount whose root was unlinked.
const deletedSuffix = "//deleted"

// FromMountinfo reads one namespace's mountinfo (the format of
// /proc/PID/mountinfo) and gives its mounts, unvalidated, as namespace nsID.
func FromMountinfo(r io.Reader, nsID uint32) (NamespaceMounts, error) {
	infos, err := mountinfo.GetMountsFromReader(r, nil)
	if err != nil {
		return NamespaceMounts{}, fmt.Errorf("parse mountinfo: %w", err)
	}
	out := NamespaceMounts{ID: nsID, Mounts: make([]Mount, 0, len(infos))}
	for _, in := range infos {
		m, err := fromInfo(in)
		if err != nil {
			return NamespaceMounts{}, fmt.Errorf("parse mountinfo: mount %d (%q): %w", in.ID, in.Mountpoint, err)
		}
		out.Mounts = append(out.Mounts, m)
	}
	return out, nil
}

func fromInfo(in *mountinfo.Info) (Mount, error) {
	if in.ID < 0 || in.Parent < 0 || in.ID > 1<<32-1 || in.Parent > 1<<32-1 {
		return Mount{}, fmt.Errorf("mount id out of range")
	}
	m := Mount{
		ID: uint32(in.ID), ParentID: uint32(in.Parent),
		Mountpoint: in.Mountpoint, Root: in.Root,
		FSType: in.FSType, Source: in.Source, Options: superOptions(in.VFSOptions),
		Flags: ParseFlags(in.Options),
		Dev:   uint32(in.Major)<<20 | uint32(in.Minor)&(1<<20-1),
	}
	for _, o := range strings.Split(in.Options, ",") {
		if o == "idmapped" {
			m.IDMap = &images.IDMaps{} // its maps: fillIDMaps
		}
	}
	if strings.HasSuffix(m.Root, deletedSuffix) {
		m.Root, m.Deleted = strings.TrimSuffix(m.Root, deletedSuffix), true
		if m.Root == "" {
			m.Root = "/"
		}
	}
	for _, field := range strings.Fields(in.Optional) {
		tag, value, _ := strings.Cut(field, ":")
		var dst *uint32
		switch tag {
		case "shared":
			dst = &m.PeerGroup
		case "master":
			dst = &m.Master
		case "propagate_from":
			dst = &m.PropagateFrom
		case "unbindable":
			m.Unbindable = true
			continue
		default:
			continue // a tag newer than this code; ignore it as the kernel allows
		}
		n, err := strconv.ParseUint(value, 10, 32)
		if err != nil || n == 0 {
			return Mount{}, fmt.Errorf("bad optional field %q", field)
		}
		*dst = uint32(n)
	}
	return m, nil
}

// superOptions drops the leading rw/ro from mountinfo's superblock options,
// as CRIU does when it dumps them.
func superOptions(s string) string {
	for _, p := range []string{"rw,", "ro,"} {
		if strings.HasPrefix(s, p) {
			return s[len(p):]
		}
	}
	if s == "rw" || s == "ro" {
		return ""
	}
	return s
}
