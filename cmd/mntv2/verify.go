package main

import (
	"errors"
	"fmt"
	"slices"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/spf13/cobra"
)

func newVerifyCommand() *cobra.Command {
	var (
		dir    string
		live   liveSource
		mntns  uint32
		ignore []string
	)
	cmd := &cobra.Command{
		Use:   "verify --images DIR (--pid PID | --mountinfo FILE | --pin-dir DIR | --tree PID) [--mntns ID]",
		Short: "Check a live or captured mount tree against CRIU images",
		Long: `verify compares mount namespaces with the ones CRIU images describe, up to a
renaming of mount ids, device numbers and peer group numbers: same trees by
mountpoint (stacking order included), root paths, filesystem types, sources,
per-mount flags, shared superblocks, peer groups, masters and unbindable.
Each difference ends with its kind: [sharing] (peer groups, masters,
unbindable), [tree] (a mount missing, extra, or of another filesystem, root
or source), [flags], or [remapped] (what the restorer chose: an external
mount's host source, a cgroup root). --ignore KIND leaves a kind out; a
runtime's restore remaps on purpose, so 'verify --ignore remapped' checks
the rest.

The tree to check comes from one of:
  --pid PID         /proc/PID/mountinfo (the mounts visible from PID's root)
  --mountinfo FILE  a saved mountinfo file
  --pin-dir DIR     every namespace pinned by 'mntv2 restore' as DIR/mntns-<ID>
  --tree PID        every namespace of the process tree rooted at PID (a CRIU
                    restore of the images): the images' pstree and ids say
                    which task is in which namespace
--mntns names the image namespace to compare with; it may be left out when the
images hold one namespace, and with --pin-dir and --tree.

Exit status: 0 identical, 1 differences (listed on stdout), 2 usage or input error.`,
		Example: `  mntv2 verify --images testdata/criu-4.2/01-seed-reverse-order/images \
      --mountinfo testdata/criu-4.2/01-seed-reverse-order/mountinfo/mntns-10.mountinfo --mntns 10
  mntv2 verify --images DIR --pin-dir /run/ct1/mnt
  mntv2 verify --images DIR --pid 4242 --mntns 10
  mntv2 verify --images DIR --tree "$(cat restored.pid)"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if live.count() != 1 {
				return inputError(errors.New("give exactly one of --pid, --mountinfo, --pin-dir, --tree"))
			}
			if live.tree != 0 {
				d, err := images.Open(dir)
				if err != nil {
					return inputError(err)
				}
				defer d.Close()
				live.images = d
			}
			expected, err := loadImages(dir)
			if err != nil {
				return err
			}
			mntnsSet := cmd.Flags().Changed("mntns")
			if mntnsSet && expected.Namespace(mntns) == nil {
				return inputError(fmt.Errorf("--mntns %d: the images have no mountpoints-%d.img", mntns, mntns))
			}
			var ids []uint32
			if live.pinDir != "" || live.tree != 0 {
				ids = []uint32{}
				for _, ns := range expected.Namespaces {
					if !mntnsSet || ns.ID == mntns {
						ids = append(ids, ns.ID)
					}
				}
			} else if !mntnsSet {
				if len(expected.Namespaces) != 1 {
					return inputError(fmt.Errorf("the images hold %d mount namespaces: name one with --mntns", len(expected.Namespaces)))
				}
				mntns = expected.Namespaces[0].ID
				ids = []uint32{mntns}
			} else {
				ids = []uint32{mntns}
			}
			expected = expected.Only(ids...)
			found, err := live.build(ids, mntns)
			if err != nil {
				return err
			}
			var diffs []forest.Difference
			for _, d := range forest.Compare(expected, found) {
				if !slices.Contains(ignore, string(d.Kind)) {
					diffs = append(diffs, d)
				}
			}
			out := cmd.OutOrStdout()
			for _, d := range diffs {
				fmt.Fprintln(out, d)
			}
			fmt.Fprintln(out, forest.Summary(expected, diffs))
			if len(diffs) > 0 {
				return &exitError{code: exitDiffers, err: errors.New("")}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "images", "", "CRIU images directory (required)")
	live.addFlags(cmd.Flags(), "check")
	cmd.Flags().Uint32Var(&mntns, "mntns", 0, "image mount namespace id to compare with")
	cmd.Flags().StringSliceVar(&ignore, "ignore", nil, "kinds of difference not to report: sharing, tree, flags, remapped (repeatable)")
	_ = cmd.MarkFlagRequired("images")
	return cmd
}
