package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/restore"
	"github.com/spf13/cobra"
)

// report is what --report writes.
type report struct {
	Schema      string  `json:"schema"`
	Images      string  `json:"images"`
	Root        string  `json:"root"`
	PinDir      string  `json:"pin_dir"`
	Steps       int     `json:"steps"`
	PlanSeconds float64 `json:"plan_seconds"`
	// PreflightSeconds checks the preconditions; ApplySeconds is Apply
	// whole (its steps are in Result.Phases).
	PreflightSeconds float64         `json:"preflight_seconds"`
	ApplySeconds     float64         `json:"apply_seconds"`
	TotalSeconds     float64         `json:"total_seconds"`
	Result           *restore.Result `json:"result"`
}

func newRestoreCommand() *cobra.Command {
	var (
		dir, root, pinDir, reportFile, userNS string
		ext                                   []string
		dryRun                                bool
	)
	cmd := &cobra.Command{
		Use:   "restore --images DIR --root DIR --pin-dir DIR [--ext-mount-map KEY:PATH|auto]... [--report FILE] [--dry-run]",
		Short: "Restore the mount namespaces of CRIU images, standalone",
		Long: `restore rebuilds every mount namespace of a checkpoint, for a container
manager that restores processes itself. The root mount of each namespace is a
bind of --root; missing mountpoints are created inside it (never through a
symlink or out of it). Each namespace stays alive as PIN/mntns-<ID>, an nsfs
bind: setns into it, or nsenter --mount=PIN/mntns-<ID>. On any failure nothing
is left behind and the error names the step, mount, syscall and errno.

A container with its own user namespace (the images have userns-*.img:
LXC/Incus unprivileged containers, pods with hostUsers: false) needs
--userns PATH, that user namespace as the container manager made it again
(with the images' maps, e.g. /proc/PID/ns/user of the new init): the
namespaces it owned are made owned by it, their root and binds of the
restore root locked as a runtime's are (made in a copy into the user
namespace), what the container made itself not. Idmapped mounts recorded at
dump time (criu dump --action-script mntv2, or mntv2 dump) are idmapped
again.

--dry-run plans and checks the preconditions (root, kernel features, external
sources, tmpfs archives, pin dir, --userns) without changing anything.`,
		Example: `  mntv2 restore --images testdata/criu-4.2/03-slaves-of-subdirs/images \
      --root /var/lib/ct/rootfs --ext-mount-map auto --pin-dir /run/ct/pins --report r.json
  nsenter --mount=/run/ct/pins/mntns-10 cat /proc/self/mountinfo
  mntv2 verify --images testdata/criu-4.2/03-slaves-of-subdirs/images --pin-dir /run/ct/pins
  mntv2 release --pin-dir /run/ct/pins`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			start := time.Now()
			// Grow the fd table (an RCU grace period, when the restore
			// needs more than the first 64 fds) while planning.
			plan, err := planImagesThen(dir, ext, func(in restore.Input) { go restore.GrowFdTable(restore.FdsFor(in.Forest)) })
			if err != nil {
				return err
			}
			planTime := time.Since(start)
			d, err := images.Open(dir)
			if err != nil {
				return inputError(err)
			}
			defer d.Close()
			absRoot, err := filepath.Abs(root)
			if err != nil {
				return inputError(err)
			}
			opt := restore.Options{Root: absRoot, PinDir: pinDir, Images: d, Log: slog.Default(), MountIDs: reportFile != "", UserNS: userNS,
				// For robustness tests only: the kernel probe whose name
				// holds this text fails, as on a kernel without it.
				Hooks: restore.Hooks{HideFeature: os.Getenv("MNTV2_TEST_HIDE_FEATURE")}}
			preStart := time.Now()
			if err := restore.Preflight(plan, opt); err != nil {
				return inputError(fmt.Errorf("cannot restore: %w", err))
			}
			if dryRun {
				fmt.Fprintf(cmd.OutOrStdout(), "dry run: %d steps for %d namespaces (%d helper mounts); preconditions hold\n",
					len(plan.Steps), plan.Len(), plan.Helpers)
				return nil
			}
			// SIGTERM, SIGINT or SIGHUP stop the restore before its next
			// step and roll it back.
			stop := make(chan struct{})
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
			defer signal.Stop(sigs)
			go func() {
				if _, ok := <-sigs; ok {
					close(stop)
				}
			}()
			opt.Stop = stop
			// For robustness tests only: fail the N-th mount syscall.
			opt.Hooks.FailSyscall, _ = strconv.Atoi(os.Getenv("MNTV2_FAIL_SYSCALL"))
			opt.Hooks.BeforeStep = pauseBefore(os.Getenv("MNTV2_TEST_PAUSE"), stop)
			preTime := time.Since(preStart)
			applyStart := time.Now()
			res, err := restore.Apply(plan, opt)
			applyTime := time.Since(applyStart)
			if err != nil {
				return fmt.Errorf("restore failed, nothing was left behind: %w", err)
			}
			for _, ns := range res.Namespaces {
				fmt.Fprintf(cmd.OutOrStdout(), "namespace %d: %d mounts, pinned at %s\n", ns.ID, ns.Count, ns.Pin)
			}
			if reportFile != "" {
				rep := report{Schema: "mntv2.restore-report/v1", Images: dir, Root: absRoot, PinDir: pinDir,
					Steps: len(plan.Steps), PlanSeconds: planTime.Seconds(), PreflightSeconds: preTime.Seconds(), ApplySeconds: applyTime.Seconds(), TotalSeconds: time.Since(start).Seconds(), Result: res}
				b, err := json.MarshalIndent(rep, "", "  ")
				if err != nil {
					return err
				}
				if err := os.WriteFile(reportFile, append(b, '\n'), 0o644); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "images", "", "CRIU images directory (required)")
	f.StringVar(&root, "root", "", "directory each namespace's root mount binds (required)")
	f.StringVar(&pinDir, "pin-dir", "", "directory for the mntns-<ID> pins (required)")
	f.StringArrayVar(&ext, "ext-mount-map", nil, "external mount: KEY:PATH, or auto (same path on this host); repeatable")
	f.StringVar(&reportFile, "report", "", "write a JSON report: new mount ids, helpers, time per phase")
	f.StringVar(&userNS, "userns", "", "a user namespace (nsfs path, e.g. /proc/PID/ns/user) to own the namespaces the container's owned")
	f.BoolVar(&dryRun, "dry-run", false, "plan and check preconditions only")
	for _, n := range []string{"images", "root", "pin-dir"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}

// pauseBefore is for robustness tests only: with MNTV2_TEST_PAUSE=PHASE
// (create, assemble, sharing, flags, finish) the restore stops before the
// first step of that phase, says so on stderr, and waits up to 30 seconds
// or until stopped, so a test can signal it there.
func pauseBefore(phase string, stop <-chan struct{}) func(*restore.Plan, restore.Step) {
	if phase == "" {
		return nil
	}
	var once sync.Once
	return func(p *restore.Plan, s restore.Step) {
		if p.Phase(s) != phase {
			return
		}
		once.Do(func() {
			fmt.Fprintf(os.Stderr, "mntv2: paused before phase %s\n", phase)
			select {
			case <-stop:
			case <-time.After(30 * time.Second):
			}
		})
	}
}

func newReleaseCommand() *cobra.Command {
	var (
		pinDir string
		ids    []uint
	)
	cmd := &cobra.Command{
		Use:   "release --pin-dir DIR [--mntns ID]...",
		Short: "Undo the pins of restored namespaces",
		Long: `release unmounts and removes PIN/mntns-<ID> (every pin of the dir, or those
named by --mntns), so each namespace ends with its last process. A file that is
not an nsfs mount is left alone and reported.`,
		Example: `  mntv2 release --pin-dir /run/ct/pins
  mntv2 release --pin-dir /run/ct/pins --mntns 10`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var names []string
			for _, id := range ids {
				names = append(names, restore.PinName(uint32(id)))
			}
			done, err := restore.Release(pinDir, names...)
			for _, n := range done {
				fmt.Fprintf(cmd.OutOrStdout(), "released %s\n", filepath.Join(pinDir, n))
			}
			if err != nil {
				return inputError(err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&pinDir, "pin-dir", "", "directory of the pins (required)")
	cmd.Flags().UintSliceVar(&ids, "mntns", nil, "release only these namespace ids")
	_ = cmd.MarkFlagRequired("pin-dir")
	return cmd
}
