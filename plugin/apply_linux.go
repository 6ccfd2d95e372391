package plugin

import (
	"fmt"
	"log/slog"
	"strings"
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
	// Strip keeps every mount CRIU's to restore (strip and reapply), as
	// before reduce and complete: MNTV2_REDUCE=0.
	Strip bool
}

// Report says what post-restore did.
type Report struct {
	restore.LiveResult
	Seconds float64 `json:"seconds"`
	// Mode is the rewrite post-restore finished: strip, reduce, or ""
	// when the images were not rewritten (only verified).
	Mode string `json:"mode,omitempty"`
}

// PostRestore finishes a restore of the images in d whose root task is
// root (restored, stopped): it puts the original images back, then makes
// the mounts CRIU was not given (reduce mode), applies the sharing of
// every restored mount namespace and verifies it.
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
	input, err := forest.ImageNamespaces(d)
	if err != nil {
		return nil, err
	}
	rootNS, _, err := d.RootMountNamespace()
	if err != nil {
		return nil, err
	}
	nsPaths, err := RestoredNamespaces(d, root)
	if err != nil {
		return nil, err
	}
	rep := &Report{}
	if man == nil {
		// The images were not rewritten: CRIU restored the sharing itself.
		log.Warn("no rewrite of the images was recorded (pre-restore did not run or found no sharing): only verifying")
		original, err := forest.BuildImages(input)
		if err != nil {
			return nil, fmt.Errorf("images: %w", err)
		}
		rep.Namespaces, rep.Mounts = len(nsPaths), original.Len()
		if rep.Differences, err = restore.Verify(original, nsPaths); err != nil {
			return nil, err
		}
	} else {
		rep.Mode = man.Mode
		judgeLive := func(diffs []forest.Difference, made map[restore.MountRef]bool) error {
			return judge(diffs, made, cfg, log)
		}
		res, err := restore.ApplyLive(input, nsPaths, restore.LiveOptions{Log: log, RootNS: rootNS, Helpers: man.Helpers,
			Kept: man.KeptSet(), Images: d, HostLenient: cfg.Lenient, FailSyscall: cfg.FailSyscall, Judge: judgeLive})
		if res != nil {
			rep.LiveResult = *res
		}
		if err != nil {
			return rep, err
		}
	}
	if man == nil {
		err = judge(rep.Differences, nil, cfg, log)
	}
	rep.Seconds = time.Since(start).Seconds()
	if err == nil {
		log.Info("mounts restored and verified", "mode", rep.Mode, "namespaces", rep.Namespaces, "mounts", rep.Mounts,
			"made", rep.Created, "steps", rep.Steps, "helpers", rep.Helpers, "syscalls", rep.Result.Syscalls, "seconds", rep.Seconds)
	}
	return rep, err
}

// judge turns what verify found into the hook's verdict. mntv2 made the
// sharing (peer groups, masters, unbindable) and, in reduce mode, the
// mounts it made: a difference there aborts the restore (unless lenient).
// The tree and flags of what CRIU restored are CRIU's doing, and remapped
// differences the runtime's choice (external sources, cgroup roots): CRIU
// alone leaves them the same, so they are warnings, never an abort.
func judge(diffs []forest.Difference, made map[restore.MountRef]bool, cfg Config, log *slog.Logger) error {
	var fatal, other []string
	for _, d := range diffs {
		if d.Kind == forest.KindSharing || d.Kind != forest.KindRemapped && made[restore.MountRef{NS: d.NS, Mount: d.Mount}] {
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
		return nil
	}
	err := fmt.Errorf("the restored mounts differ from the images in %d ways mntv2 answers for:\n%s", len(fatal), strings.Join(fatal, "\n"))
	if !cfg.Lenient {
		return err
	}
	log.Warn("restored mounts differ (lenient: not aborting)", "err", err)
	return nil
}
