package main

import (
	"errors"
	"fmt"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/spf13/cobra"
)

func newShowCommand() *cobra.Command {
	var (
		dir, format string
		live        liveSource
		mntns       uint32
		canonical   bool
	)
	cmd := &cobra.Command{
		Use:   "show (--images DIR | --pid PID | --mountinfo FILE | --pin-dir DIR) [--format text|json|dot]",
		Short: "Print mount namespaces, from CRIU images or from a live system",
		Long: `show prints mount trees: one tree per namespace with each mount's
filesystem, root, flags and shared:/master: tags, then a summary of the
sharing groups. The trees come from a checkpoint (--images) or from a live
or captured tree, as verify reads them (--pid, --mountinfo, --pin-dir; --mntns
numbers the namespace of the first two, default 1, and picks one pin of
--pin-dir).

--canonical renames what verify ignores (mount ids, peer group numbers,
devices) by order of appearance, so two trees verify calls identical print
the same text. --format json writes the mntv2.forest/v1 document
(docs/json-schema.md); --format dot a Graphviz graph with peer groups as
clusters and dashed master -> slave edges.`,
		Example: `  mntv2 show --images testdata/criu-4.2/07-propagation-storm/images
  mntv2 show --images DIR --format json | jq '.groups'
  mntv2 show --images DIR --format dot | dot -Tsvg > mounts.svg
  mntv2 show --pin-dir /run/ct1/mnt --canonical
  mntv2 show --tree 4242 --canonical   # every namespace of a container`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if n := live.count(); n > 1 || n == 1 && dir != "" || n == 0 && dir == "" {
				return inputError(errors.New("give exactly one of --images, --pid, --mountinfo, --pin-dir, --tree"))
			}
			var f *forest.Forest
			var err error
			if dir != "" {
				f, err = loadImages(dir)
			} else {
				var ids []uint32 // every pin
				if cmd.Flags().Changed("mntns") {
					ids = []uint32{mntns}
				}
				f, err = live.build(ids, mntns)
			}
			if err != nil {
				return err
			}
			if canonical {
				f = f.Canonical()
			}
			out := cmd.OutOrStdout()
			switch format {
			case "text":
				return forest.WriteText(out, f)
			case "json":
				return forest.WriteJSON(out, f)
			case "dot":
				return forest.WriteDot(out, f)
			}
			return inputError(fmt.Errorf("--format %q: want text, json or dot", format))
		},
	}
	cmd.Flags().StringVar(&dir, "images", "", "CRIU images directory")
	live.addFlags(cmd.Flags(), "show")
	cmd.Flags().Uint32Var(&mntns, "mntns", 1, "namespace id to give the tree of --pid or --mountinfo")
	cmd.Flags().BoolVar(&canonical, "canonical", false, "rename mount ids, groups and devices by order of appearance")
	cmd.Flags().StringVar(&format, "format", "text", "output format: text, json or dot")
	return cmd
}

// loadImages builds the forest of an images directory; any failure is an
// input error.
func loadImages(dir string) (*forest.Forest, error) {
	d, err := images.Open(dir)
	if err != nil {
		return nil, inputError(err)
	}
	defer d.Close()
	f, err := forest.FromImages(d)
	if err != nil {
		return nil, inputError(err)
	}
	return f, nil
}
