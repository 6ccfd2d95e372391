package main

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/internal/gen"
	"github.com/mntv2/mntv2/restore"
	"golang.org/x/sys/unix"
)

func init() { runtime.LockOSThread() }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func runCase(r *Row) error {
	dir, cleanup, err := scratch()
	if err != nil {
		return err
	}
	defer cleanup()
	imgDir := filepath.Join(dir, "images")
	if err := os.Mkdir(imgDir, 0o700); err != nil {
		return err
	}
	nss, err := gen.Forest(r.Shape, r.N)
	if err != nil {
		return err
	}
	d, err := images.Open(imgDir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := gen.WriteImages(d, nss); err != nil {
		return err
	}
	nss = nil
	runtime.GC()
	switch r.Mode {
	case "plan":
		return planCase(r, d)
	case "restore":
		return restoreCase(r, d, dir)
	case "hook":
		return hookCase(r, d, dir)
	}
	return fmt.Errorf("unknown mode %q", r.Mode)
}

func planCase(r *Row, d *images.Dir) error {
	t0 := time.Now()
	in, err := restore.LoadInput(d)
	if err != nil {
		return err
	}
	r.LoadS = time.Since(t0).Seconds()
	var plan *restore.Plan
	for run := 0; run < 3; run++ { // best of three
		t1 := time.Now()
		if plan, err = restore.NewPlan(in); err != nil {
			return err
		}
		if el := time.Since(t1).Seconds(); r.PlanS == 0 || el < r.PlanS {
			r.PlanS = el
		}
	}
	r.Mounts, r.Steps, r.Helpers = in.Forest.Len(), len(plan.Steps), plan.Helpers
	r.PeakMB = peakRSSMB()
	return nil
}

// peakRSSMB is VmHWM of this process.
func peakRSSMB() float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return float64(kb) / 1024
		}
	}
	return 0
}

// mountTmpfs mounts a tmpfs on a new directory below dir.
func mountTmpfs(dir, name string) (string, error) {
	p := filepath.Join(dir, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		return "", err
	}
	return p, unix.Mount("bench", p, "tmpfs", 0, "")
}

func restoreCase(r *Row, d *images.Dir, dir string) error {
	in, err := restore.LoadInput(d)
	if err != nil {
		return err
	}
	t := time.Now()
	plan, err := restore.NewPlan(in)
	if err != nil {
		return err
	}
	r.PlanS = time.Since(t).Seconds()
	r.Mounts, r.Steps, r.Helpers = in.Forest.Len(), len(plan.Steps), plan.Helpers
	c := countSteps(plan)
	for run := 0; run < 3; run++ {
		f, err := fullFloor(c, dir, run)
		if err != nil {
			return fmt.Errorf("floor: %w", err)
		}
		if r.FloorS == 0 || f.Seconds() < r.FloorS {
			r.FloorS = f.Seconds()
		}
		root, err := mountTmpfs(dir, fmt.Sprintf("root%d", run))
		if err != nil {
			return err
		}
		pins := filepath.Join(dir, fmt.Sprintf("pins%d", run))
		t := time.Now()
		res, err := restore.Apply(plan, restore.Options{Root: root, PinDir: pins, Images: d, Log: quiet})
		if err != nil {
			return err
		}
		el := time.Since(t).Seconds()
		if r.RestoreS == 0 || el < r.RestoreS {
			r.RestoreS, r.Syscalls = el, res.Syscalls
			r.Phases = map[string]float64{}
			for _, p := range res.Phases {
				r.Phases[p.Phase] += p.Seconds
			}
		}
		t = time.Now()
		found, err := forest.ReadNamespaceFiles(pinPaths(in.Forest, pins))
		if err != nil {
			return err
		}
		ff, err := forest.Build(found)
		if err != nil {
			return err
		}
		if diffs := forest.Compare(in.Forest, ff); len(diffs) > 0 {
			return fmt.Errorf("restored tree differs: %d differences, first %s", len(diffs), diffs[0])
		}
		r.VerifyS = time.Since(t).Seconds()
		t = time.Now()
		if _, err := restore.Release(pins); err != nil {
			return err
		}
		r.ReleaseS = time.Since(t).Seconds()
		_ = unix.Unmount(root, unix.MNT_DETACH)
	}
	r.Ratio = r.RestoreS / r.FloorS
	return nil
}

// hookCase: the tree restored all private (as CRIU restores the stripped
// images), then post-restore's work: match, plan, apply, against a floor of
// the same syscalls.
func hookCase(r *Row, d *images.Dir, dir string) error {
	input, err := forest.ImageNamespaces(d)
	if err != nil {
		return err
	}
	original, err := forest.Build(input)
	if err != nil {
		return err
	}
	stripped := forest.WithoutSharing(input)
	sf, err := forest.Build(stripped)
	if err != nil {
		return err
	}
	in, err := restore.LoadInput(d) // for the tmpfs content
	if err != nil {
		return err
	}
	in.Forest = sf
	plan, err := restore.NewPlan(in)
	if err != nil {
		return err
	}
	live, err := restore.NewLivePlan(restore.Input{Forest: original})
	if err != nil {
		return err
	}
	c := countSteps(live)
	r.Mounts, r.Steps = original.Len(), len(live.Steps)
	for run := 0; run < 5; run++ { // best of five: reading 10,000 mounts varies
		root, err := mountTmpfs(dir, fmt.Sprintf("root%d", run))
		if err != nil {
			return err
		}
		pins := filepath.Join(dir, fmt.Sprintf("pins%d", run))
		if _, err := restore.Apply(plan, restore.Options{Root: root, PinDir: pins, Images: d, Log: quiet}); err != nil {
			return err
		}
		paths := pinPaths(original, pins)
		rep, err := restore.ApplyLive(input, paths, restore.LiveOptions{Log: quiet})
		if err != nil {
			return err
		}
		// The floor: the same syscalls on a private tree of its own.
		own := c.openLive + c.setGroup + c.prop
		f, err := hookFloor(c, max(rep.Result.Syscalls-own, 0))
		if err != nil {
			return fmt.Errorf("floor: %w", err)
		}
		if r.FloorS == 0 || f.Seconds() < r.FloorS {
			r.FloorS = f.Seconds()
		}
		hook := rep.ReadSeconds + rep.ApplySeconds // read, match, plan, apply
		if r.HookS == 0 || hook < r.HookS {
			r.HookS, r.Syscalls, r.VerifyS = hook, rep.Result.Syscalls, rep.VerifySeconds
			r.Phases = map[string]float64{"read": rep.ReadSeconds, "plan": rep.PlanSeconds, "apply": rep.ApplySeconds}
		}
		if _, err := restore.Release(pins); err != nil {
			return err
		}
		_ = unix.Unmount(root, unix.MNT_DETACH)
	}
	r.Ratio = r.HookS / r.FloorS
	return nil
}

// pinPaths names the pin of each namespace of f in a pin dir.
func pinPaths(f *forest.Forest, pins string) map[uint32]string {
	paths := make(map[uint32]string, len(f.Namespaces))
	for _, ns := range f.Namespaces {
		paths[ns.ID] = filepath.Join(pins, restore.PinName(ns.ID))
	}
	return paths
}
