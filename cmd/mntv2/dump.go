package main

import (
	"fmt"

	"github.com/mntv2/mntv2/dump"
	"github.com/spf13/cobra"
)

func newDumpCommand() *cobra.Command {
	var (
		pid     int
		dir     string
		content bool
	)
	cmd := &cobra.Command{
		Use:   "dump --pid PID --images DIR [--tmpfs-content]",
		Short: "Write CRIU mount images of a live process tree",
		Long: `dump writes inventory, pstree, ids-<pid> and mountpoints-<ns> images for the
mount namespaces of PID and its descendants, in CRIU's format (crit and mntv2
read them). With --tmpfs-content it also archives each tmpfs as
tmpfs-dev-<dev>.tar.gz.img. It makes test images without CRIU; mounts are not
marked external.`,
		Example: `  mntv2 dump --pid 4242 --images /tmp/imgs --tmpfs-content
  mntv2 show --images /tmp/imgs`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if pid <= 0 {
				return inputError(fmt.Errorf("--pid %d: want a process id", pid))
			}
			sum, err := dump.Dump(pid, dir, dump.Options{TmpfsContent: content})
			if err != nil {
				return inputError(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "dumped %d tasks, %d namespaces, %d mounts, %d tmpfs archives into %s\n",
				sum.Tasks, len(sum.Namespaces), sum.Mounts, sum.Tmpfs, dir)
			return nil
		},
	}
	cmd.Flags().IntVar(&pid, "pid", 0, "process whose tree to dump (required)")
	cmd.Flags().StringVar(&dir, "images", "", "directory to write the images to (required)")
	cmd.Flags().BoolVar(&content, "tmpfs-content", false, "also archive the content of every tmpfs")
	_ = cmd.MarkFlagRequired("pid")
	_ = cmd.MarkFlagRequired("images")
	return cmd
}
