package main

import (
	"fmt"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/spf13/cobra"
)

func newShowCommand() *cobra.Command {
	var dir, format string
	cmd := &cobra.Command{
		Use:   "show --images DIR [--format text|json|dot]",
		Short: "Print the mount namespaces described by CRIU images",
		Long: `show prints the mount trees of a checkpoint: one tree per namespace with
each mount's filesystem, root, flags and shared:/master: tags, then a summary
of the sharing groups. --format json writes the mntv2.forest/v1 document
(docs/json-schema.md); --format dot a Graphviz graph with peer groups as
clusters and dashed master -> slave edges.`,
		Example: `  mntv2 show --images testdata/criu-4.2/07-propagation-storm/images
  mntv2 show --images DIR --format json | jq '.groups'
  mntv2 show --images DIR --format dot | dot -Tsvg > mounts.svg`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := loadImages(dir)
			if err != nil {
				return err
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
	cmd.Flags().StringVar(&dir, "images", "", "CRIU images directory (required)")
	cmd.Flags().StringVar(&format, "format", "text", "output format: text, json or dot")
	_ = cmd.MarkFlagRequired("images")
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
