package plugin

import (
	"fmt"
	"log/slog"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
)

// PostDump records, next to the images CRIU has just written, what the
// dumped tree's mounts have that CRIU's images cannot carry
// (images.Extra): the per-mount flags its dump drops (nosymfollow), and
// idmapped mounts' maps (statmount). The tasks are still frozen (CRIU runs
// post-dump before it kills or resumes them), so their namespaces are read
// live; mount ids are the images' own. The record is written even when it
// lists no mount: then it says that none was idmapped.
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
		byID := make(map[uint32]*forest.Mount, len(live.Mounts))
		for i := range live.Mounts {
			byID[live.Mounts[i].ID] = &live.Mounts[i]
		}
		for _, m := range ns.Mounts {
			lm, ok := byID[m.ID]
			if !ok {
				continue
			}
			e := images.ExtraMount{NS: ns.ID, MntID: m.ID, Flags: uint32(lm.Flags & forest.ImageLossy &^ m.Flags)}
			if lm.IDMap != nil {
				e.IDMap = lm.IDMap
			}
			if e.Flags != 0 || e.IDMap != nil {
				x.Mounts = append(x.Mounts, e)
			}
		}
	}
	// The record is written even with nothing in it: its presence says no
	// mount was idmapped, which the images alone cannot.
	if err := d.WriteExtra(x); err != nil {
		return nil, fmt.Errorf("post-dump: write %s: %w", images.ExtraName, err)
	}
	log.Info("post-dump: recorded what CRIU's images lose", "file", images.ExtraName, "mounts", len(x.Mounts))
	return x, nil
}
