package plugin

import (
	"fmt"
	"log/slog"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
)

// PostDump records, next to the images CRIU has just written, what the
// dumped tree's mounts have that CRIU's images cannot carry
// (images.Extra): the per-mount flags its dump drops (nosymfollow). The
// tasks are still frozen (CRIU runs post-dump before it kills or resumes
// them), so their namespaces are read live; mount ids are the images' own.
// It writes nothing when nothing is lost.
func PostDump(d *images.Dir, root int, log *slog.Logger) (*images.Extra, error) {
	input, err := forest.ImageNamespaces(d)
	if err != nil {
		return nil, err
	}
	nsPaths, err := RestoredNamespaces(d, root)
	if err != nil {
		return nil, err
	}
	x := &images.Extra{}
	for _, ns := range input {
		live, err := forest.ReadNamespaceFile(nsPaths[ns.ID], ns.ID)
		if err != nil {
			return nil, err
		}
		byID := make(map[uint32]forest.Flags, len(live.Mounts))
		for _, m := range live.Mounts {
			byID[m.ID] = m.Flags
		}
		for _, m := range ns.Mounts {
			lf, ok := byID[m.ID]
			if !ok {
				continue
			}
			if lost := lf & forest.ImageLossy &^ m.Flags; lost != 0 {
				x.Mounts = append(x.Mounts, images.ExtraMount{NS: ns.ID, MntID: m.ID, Flags: uint32(lost)})
			}
		}
	}
	if len(x.Mounts) == 0 {
		log.Info("post-dump: the images carry everything mntv2 restores of the mounts; no record written")
		return x, nil
	}
	if err := d.WriteExtra(x); err != nil {
		return nil, fmt.Errorf("post-dump: write %s: %w", images.ExtraName, err)
	}
	log.Info("post-dump: recorded what CRIU's images lose", "file", images.ExtraName, "mounts", len(x.Mounts))
	return x, nil
}
