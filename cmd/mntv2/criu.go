package main

import (
	"fmt"
	"os"

	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/plugin"
	"github.com/spf13/cobra"
)

// runHook is mntv2 as CRIU's action script: no arguments, the action in
// CRTOOLS_SCRIPT_ACTION. A non-zero exit aborts the restore.
func runHook() int {
	report, criu, prepared := resident()
	s, err := plugin.LoadSettings(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mntv2: "+err.Error())
		if prepared != "" {
			// The C half rewrote the images: put them back.
			if d, derr := images.Open(os.Getenv(plugin.EnvImageDir)); derr == nil {
				_, _ = plugin.Recover(d)
				d.Close()
			}
		}
		if report >= 0 {
			_, _ = os.NewFile(uintptr(report), "resident-report").Write([]byte{exitDiffers})
		}
		return exitDiffers
	}
	log, closeLog := s.Logger(os.Stderr)
	defer closeLog()
	if report >= 0 || prepared != "" {
		var rep *os.File
		if report >= 0 {
			rep = os.NewFile(uintptr(report), "resident-report")
		}
		return plugin.Resident(os.Getenv, s, log, criu, rep, prepared)
	}
	if err := plugin.Hook(os.Getenv, s, log); err != nil {
		log.Error("aborting the restore", "action", os.Getenv(plugin.EnvAction), "err", err)
		return exitDiffers
	}
	return exitOK
}

func newCriuImagesCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "criu-images",
		Short: "Inspect or recover an images directory rewritten by the CRIU hook",
		Long: `At pre-restore the CRIU hook (mntv2 as --action-script) rewrites
mountpoints-*.img without sharing and keeps each original as
mntv2-orig-<name>, listed in mntv2-manifest.json. Post-restore puts them back;
if CRIU dies in between, a watcher process does. These commands show and
undo a rewrite by hand.`,
	}
	cmd.AddCommand(newCriuImagesRestoreCommand(), newCriuImagesStatusCommand())
	return cmd
}

func newCriuImagesRestoreCommand() *cobra.Command {
	return imagesDirCommand("restore DIR", "Put the original images back (safe to run at any time)",
		"  mntv2 criu-images restore /var/lib/checkpoints/ct1",
		func(cmd *cobra.Command, dir string, d *images.Dir) error {
			found, err := plugin.Recover(d)
			if err != nil {
				return err
			}
			if found {
				fmt.Fprintln(cmd.OutOrStdout(), "restored the original images")
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), "nothing to restore: the images are the originals")
			}
			return nil
		})
}

func newCriuImagesStatusCommand() *cobra.Command {
	return imagesDirCommand("status DIR", "Say whether the images are rewritten (exit 1) or the originals (exit 0)",
		"  mntv2 criu-images status /var/lib/checkpoints/ct1",
		func(cmd *cobra.Command, dir string, d *images.Dir) error {
			man, err := plugin.ReadManifest(d)
			if err != nil {
				return err
			}
			if man == nil {
				fmt.Fprintln(cmd.OutOrStdout(), "original images")
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rewritten by mntv2 for CRIU pid %d: %d files, %d helper mounts\n", man.Owner, len(man.Files), len(man.Helpers))
			return &exitError{code: exitDiffers, err: fmt.Errorf("run mntv2 criu-images restore %s to put the originals back", dir)}
		})
}

// imagesDirCommand is a command on one images directory, its argument.
func imagesDirCommand(use, short, example string, run func(*cobra.Command, string, *images.Dir) error) *cobra.Command {
	return &cobra.Command{
		Use: use, Short: short, Example: example, Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := openImagesArg(args[0])
			if err != nil {
				return err
			}
			defer d.Close()
			return run(cmd, args[0], d)
		},
	}
}

func openImagesArg(dir string) (*images.Dir, error) {
	d, err := images.Open(dir)
	if err != nil {
		return nil, inputError(err)
	}
	return d, nil
}
