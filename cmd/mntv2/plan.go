package main

import (
	"encoding/json"
	"fmt"

	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/restore"
	"github.com/spf13/cobra"
)

func newPlanCommand() *cobra.Command {
	var (
		dir    string
		asJSON bool
		ext    []string
	)
	cmd := &cobra.Command{
		Use:   "plan --images DIR [--json] [--ext-mount-map KEY:PATH|auto]...",
		Short: "Print the steps that would restore the mount namespaces of CRIU images",
		Long: `plan prints the ordered steps of a restore, each with the reason it exists:
namespaces, superblocks and binds (all private and detached), the attach of
every mount under its parent, the sharing phase (peer groups and masters with
MOVE_MOUNT_SET_GROUP, master before slave, helper mounts where no member can
be copied from), unbindable, per-mount flags, and the pins. It changes
nothing.`,
		Example: `  mntv2 plan --images testdata/criu-4.2/02-peers-no-common-root/images --ext-mount-map auto
  mntv2 plan --images DIR --ext-mount-map auto --json | jq '.helpers'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			plan, err := planImages(dir, ext)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(plan)
			}
			for i, s := range plan.Steps {
				fmt.Fprintf(out, "%4d  %s\n", i, s)
			}
			fmt.Fprintf(out, "%d steps, %d namespaces, %d handles, %d helper mounts\n",
				len(plan.Steps), len(plan.Namespaces), len(plan.Handles), plan.Helpers)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "images", "", "CRIU images directory (required)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the plan as JSON")
	cmd.Flags().StringArrayVar(&ext, "ext-mount-map", nil, "external mount: KEY:PATH, or auto (same path on this host); repeatable")
	_ = cmd.MarkFlagRequired("images")
	return cmd
}

// planImages loads images and plans their restore; every failure is an
// input error.
func planImages(dir string, ext []string) (*restore.Plan, error) {
	return planImagesThen(dir, ext, nil)
}

// planImagesThen is planImages that calls loaded, if set, once the images
// are read and before planning.
func planImagesThen(dir string, ext []string, loaded func(restore.Input)) (*restore.Plan, error) {
	extMap, auto, err := restore.ParseExtMountMap(ext)
	if err != nil {
		return nil, inputError(err)
	}
	d, err := images.Open(dir)
	if err != nil {
		return nil, inputError(err)
	}
	defer d.Close()
	in, err := restore.LoadInput(d)
	if err != nil {
		return nil, inputError(err)
	}
	in.External, in.Auto = extMap, auto
	if loaded != nil {
		loaded(in)
	}
	plan, err := restore.NewPlan(in)
	if err != nil {
		return nil, inputError(err)
	}
	return plan, nil
}
