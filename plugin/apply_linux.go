package plugin

import (
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
	"github.com/mntv2/mntv2/restore"
)

// Config are the settings of the hook.
type Config struct {
	Log *slog.Logger
	// Lenient only logs a namespace that differs from the images after
	// sharing was applied, instead of aborting the restore.
	Lenient bool
	// FailSyscall makes the N-th mount syscall of post-restore fail: for
	// tests of the abort path only.
	FailSyscall int
	// RootNS is the root task's mount namespace (0: the first).
	RootNS uint32
}

// Report says what post-restore did.
type Report struct {
	Namespaces int            `json:"namespaces"`
	Mounts     int            `json:"mounts"`
	Steps      int            `json:"steps"`
	Helpers    int            `json:"helpers"`
	Result     restore.Result `json:"result"`
	Seconds    float64        `json:"seconds"`
	// Where Seconds went: reading and matching the restored namespaces,
	// applying, verifying. PlanSeconds is the part of ReadSeconds spent
	// building the images' trees and planning, beside the read.
	ReadSeconds   float64 `json:"read_seconds"`
	PlanSeconds   float64 `json:"plan_seconds"`
	ApplySeconds  float64 `json:"apply_seconds"`
	VerifySeconds float64 `json:"verify_seconds"`
	// Differences are what verify found after the sharing was applied,
	// each with its kind; Warnings what the plan restored less exactly
	// than the images say (lenient).
	Differences []forest.Difference `json:"differences"`
	Warnings    []string            `json:"warnings,omitempty"`
}

// PostRestore finishes a restore of the images in d whose root task is
// root (restored, stopped): it puts the original images back, then applies
// and verifies the sharing of every restored mount namespace.
func PostRestore(d *images.Dir, root int, cfg Config) (*Report, error) {
	start := time.Now()
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	man, merr := ReadManifest(d)
	if _, err := Recover(d); err != nil {
		return nil, fmt.Errorf("put the original images back: %w", err)
	}
	if merr != nil {
		return nil, merr
	}
	if man == nil {
		log.Warn("no rewrite of the images was recorded (pre-restore did not run or found no sharing): only verifying")
	}
	input, err := forest.ImageNamespaces(d)
	if err != nil {
		return nil, err
	}
	if cfg.RootNS, _, err = d.RootMountNamespace(); err != nil {
		return nil, err
	}
	nsPaths, err := RestoredNamespaces(d, root)
	if err != nil {
		return nil, err
	}
	if man == nil {
		// The images were not rewritten: CRIU restored the sharing itself.
		original, err := forest.BuildImages(input)
		if err != nil {
			return nil, fmt.Errorf("images: %w", err)
		}
		rep := &Report{Namespaces: len(nsPaths), Mounts: original.Len()}
		rep.Differences, err = verifyNamespaces(original, nsPaths, cfg, log)
		rep.Seconds = time.Since(start).Seconds()
		return rep, err
	}
	rep, err := ApplyLive(input, man.Helpers, nsPaths, cfg)
	if rep != nil {
		rep.Seconds = time.Since(start).Seconds()
	}
	return rep, err
}

// ApplyLive applies the sharing of the image namespaces input (plus the
// helper mounts added at pre-restore) to the restored, all-private
// namespaces at nsPaths (image namespace id -> nsfs file), then verifies
// each against the images.
func ApplyLive(input []forest.NamespaceMounts, helpers []restore.HelperMount, nsPaths map[uint32]string, cfg Config) (*Report, error) {
	start := time.Now()
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	// The restored namespaces are read first, each on a thread of its own
	// (the kernel takes about 1.3 us a mount to write mountinfo): the
	// images' trees are built and the plan made meanwhile. The plan needs
	// only the images and the host's groups (read on the caller's thread,
	// and so in its namespace).
	ids := make([]uint32, len(input))
	for i := range input {
		ids[i] = input[i].ID
	}
	trees := make([]*forest.Forest, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			trees[i], errs[i] = readLive(nsPaths[id], id)
		}()
	}
	defer wg.Wait() // no reader outlives this call, whatever fails
	original, err := forest.BuildImages(input)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	// Grow the fd table (an RCU grace period) while reading the trees; its
	// passing fd is closed before this returns.
	grown := make(chan struct{})
	go func() { restore.GrowFdTable(restore.FdsFor(original)); close(grown) }()
	defer func() { <-grown }()
	// What was restored: the images plus the helper mounts.
	withHelpers := original
	helperSet := map[restore.MountRef]bool{}
	if len(helpers) > 0 {
		with := make([]forest.NamespaceMounts, len(input))
		for i := range input {
			with[i] = forest.NamespaceMounts{ID: input[i].ID, Mounts: append([]forest.Mount(nil), input[i].Mounts...)}
			for _, h := range helpers {
				if h.NS == input[i].ID {
					with[i].Mounts = append(with[i].Mounts, h.Mount)
					helperSet[restore.MountRef{NS: h.NS, Mount: h.Mount.ID}] = true
				}
			}
		}
		if withHelpers, err = forest.Build(with); err != nil {
			return nil, fmt.Errorf("images with mntv2's helper mounts: %w", err)
		}
	}
	host, err := hostMounts()
	if err != nil {
		return nil, err
	}
	liveIn := &restore.LiveInput{Helpers: helperSet}
	in := restore.Input{Forest: withHelpers, Live: liveIn, RootNS: cfg.RootNS, HostLenient: cfg.Lenient}
	// The plan needs the restored trees only to find the host's side of
	// external sharing; otherwise it is made while they are read.
	var plan *restore.Plan
	if !restore.NeedsHost(withHelpers) {
		if plan, err = restore.NewLivePlan(in); err != nil {
			return nil, err
		}
	}
	planDone := time.Now()
	wg.Wait()
	byID := make(map[uint32]int, len(ids))
	for i, id := range ids {
		if errs[i] != nil {
			return nil, errs[i]
		}
		byID[id] = i
	}
	live := map[uint32]*restore.LiveNamespace{}
	for _, ns := range withHelpers.Namespaces {
		lns := trees[byID[ns.ID]].Namespaces[0]
		m := forest.Match(ns, lns)
		var bad []string
		for _, e := range m.Missing {
			bad = append(bad, fmt.Sprintf("mount %d (%s) was not restored", e.ID, e.Mountpoint))
		}
		if len(bad) > 0 {
			return nil, fmt.Errorf("namespace %d as CRIU restored it does not match the images: %s", ns.ID, strings.Join(bad, "; "))
		}
		// A mount CRIU made that the images do not have (tracefs under a
		// debugfs: CRIU never dumps it) takes no part in the sharing;
		// verify reports it by its kind.
		ln := &restore.LiveNamespace{NSPath: nsPaths[ns.ID], Tree: lns, Mounts: make(map[uint32]*forest.Mount, len(m.Pairs))}
		for e, f := range m.Pairs {
			ln.Mounts[e.ID] = f
		}
		live[ns.ID] = ln
	}
	if plan == nil {
		liveIn.HostPaths, liveIn.NoHost, liveIn.HostPeers = restore.HostPaths(withHelpers, cfg.RootNS, live, host)
		if plan, err = restore.NewLivePlan(in); err != nil {
			return nil, err
		}
	}
	for _, w := range plan.Warnings {
		log.Warn("post-restore: " + w)
	}
	readDone := time.Now()
	res, err := restore.Apply(plan, restore.Options{Live: live, Log: log, FailSyscall: cfg.FailSyscall})
	if err != nil {
		return nil, fmt.Errorf("apply sharing: %w", err)
	}
	rep := &Report{Namespaces: len(live), Mounts: original.Len(), Steps: len(plan.Steps), Helpers: plan.Helpers, Result: *res}
	vstart := time.Now()
	rep.ReadSeconds, rep.PlanSeconds, rep.ApplySeconds = readDone.Sub(start).Seconds(), planDone.Sub(start).Seconds(), vstart.Sub(readDone).Seconds()
	rep.Warnings = plan.Warnings
	rep.Differences, err = verifyNamespaces(original, nsPaths, cfg, log)
	rep.VerifySeconds = time.Since(vstart).Seconds()
	if err != nil {
		return rep, err
	}
	rep.Seconds = time.Since(start).Seconds()
	log.Info("mount sharing restored and verified", "namespaces", rep.Namespaces, "mounts", rep.Mounts,
		"steps", rep.Steps, "helpers", rep.Helpers, "syscalls", res.Syscalls, "seconds", rep.Seconds)
	return rep, nil
}

// verifyNamespaces compares the live namespaces with the images. mntv2
// made the sharing (peer groups, masters, unbindable), so a sharing
// difference aborts the restore (unless lenient); the tree and the flags
// are CRIU's doing, and remapped ones the runtime's choice (external
// sources, cgroup roots): CRIU alone leaves them the same, so they are
// warnings, never an abort.
func verifyNamespaces(original *forest.Forest, nsPaths map[uint32]string, cfg Config, log *slog.Logger) (diffs []forest.Difference, err error) {
	paths := make(map[uint32]string, len(original.Namespaces))
	for _, ns := range original.Namespaces {
		paths[ns.ID] = nsPaths[ns.ID]
	}
	found, err := forest.ReadNamespaceFiles(paths)
	if err != nil {
		return nil, err
	}
	ff, err := forest.Build(found)
	if err != nil {
		return nil, fmt.Errorf("restored namespaces: %w", err)
	}
	diffs = forest.Compare(original, ff)
	var fatal, other []string
	for _, d := range diffs {
		if d.Kind == forest.KindSharing {
			fatal = append(fatal, d.String())
		} else {
			other = append(other, d.String())
		}
	}
	if len(other) > 0 {
		log.Warn(fmt.Sprintf("post-restore: the restored mounts differ from the images in %d ways that CRIU or the runtime decides (not aborting): %s",
			len(other), strings.Join(other, "; ")))
	}
	if len(fatal) == 0 {
		return diffs, nil
	}
	err = fmt.Errorf("the restored mounts' sharing differs from the images in %d ways:\n%s", len(fatal), strings.Join(fatal, "\n"))
	if !cfg.Lenient {
		return diffs, err
	}
	log.Warn("restored mounts differ (lenient: not aborting)", "err", err)
	return diffs, nil
}

func readLive(nsPath string, id uint32) (*forest.Forest, error) {
	nm, err := forest.ReadNamespaceFile(nsPath, id)
	if err != nil {
		return nil, err
	}
	f, err := forest.Build([]forest.NamespaceMounts{nm})
	if err != nil {
		return nil, fmt.Errorf("restored namespace %d: %w", id, err)
	}
	return f, nil
}

// hostMounts reads the mounts of the calling thread's mount namespace
// (the one CRIU restores from), the host side of external sharing. It
// reads /proc/thread-self on a locked thread: in a Go program the main
// thread (what /proc/PID shows) may be left in another namespace.
func hostMounts() ([]forest.Mount, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	nm, err := forest.ReadMountinfoFile("/proc/thread-self/mountinfo", 0)
	if err != nil {
		return nil, err
	}
	return nm.Mounts, nil
}
