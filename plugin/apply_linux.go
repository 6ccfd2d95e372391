package plugin

import (
	"errors"
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
	// Stop, when closed, stops post-restore before its next mount step
	// and rolls back what it made (CRIU or its action script died).
	Stop <-chan struct{}
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
	rep, err := postRestore(d, root, cfg, nil)
	return rep, errors.Join(err, d.Sync())
}

// rewritten is what pre-restore knows that post-restore needs: the
// manifest and the original mounts (the images hold the rewritten ones
// until post-restore puts the originals back).
type rewritten struct {
	man   *Manifest
	input []forest.NamespaceMounts
	// live is the completion made ready while CRIU restores the tasks
	// (restore.PrepareLive); judged with cfg and log, post-restore's.
	live *restore.PreparedLive
	cfg  Config
	log  *slog.Logger
}

// prepare makes the completion ready (see rewritten.live); a failure only
// leaves it to post-restore, which meets it again and says so.
func (pre *rewritten) prepare(d *images.Dir, cfg Config, log *slog.Logger) {
	if pre.man == nil {
		return
	}
	opt, err := liveOptions(d, cfg, log, pre.man, func(diffs []forest.Difference, made map[restore.MountRef]bool) error {
		return judge(diffs, made, pre.cfg, pre.log)
	})
	if err == nil {
		pre.live, err = restore.PrepareLive(pre.input, opt)
	}
	if err != nil {
		log.Debug("resident hook: the completion is not made ready ahead", "err", err)
		return
	}
	log.Debug("resident hook: completion ready", "early_steps", pre.live.EarlySteps, "seconds", pre.live.EarlySeconds)
}

// liveOptions are restore.ApplyLive's options for a rewrite man of d.
func liveOptions(d *images.Dir, cfg Config, log *slog.Logger, man *Manifest, judge func([]forest.Difference, map[restore.MountRef]bool) error) (restore.LiveOptions, error) {
	rootNS, _, err := d.RootMountNamespace()
	if err != nil {
		return restore.LiveOptions{}, err
	}
	return restore.LiveOptions{Log: log, RootNS: rootNS, Helpers: man.Helpers, Kept: man.KeptSet(), Images: d,
		HostLenient: cfg.Lenient, Hooks: restore.Hooks{FailSyscall: cfg.FailSyscall}, Judge: judge, Stop: cfg.Stop}, nil
}

// postRestore is PostRestore without the fsync of the directory the
// originals are put back in (the caller's once CRIU goes on); with pre (a
// pre-restore that stayed alive to serve post-restore), they are put back
// while the mounts are made, not before.
func postRestore(d *images.Dir, root int, cfg Config, pre *rewritten) (*Report, error) {
	start := time.Now()
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	var (
		man     *Manifest
		input   []forest.NamespaceMounts
		recover = make(chan error, 1)
	)
	if pre != nil {
		man, input = pre.man, pre.input
		go func() { _, err := recoverUnsynced(d); recover <- err }()
	} else {
		var merr error
		man, merr = ReadManifest(d)
		if _, err := recoverUnsynced(d); err != nil {
			return nil, fmt.Errorf("put the original images back: %w", err)
		}
		if merr != nil {
			return nil, merr
		}
		var err error
		if input, err = forest.ImageNamespaces(d); err != nil {
			return nil, err
		}
		recover <- nil
	}
	var live *restore.PreparedLive
	if pre != nil {
		live, pre.cfg, pre.log = pre.live, cfg, log
		pre.live = nil
		if live != nil {
			live.SetLog(log, cfg.Stop)
		}
	}
	rep, err := completeRestore(d, root, cfg, log, man, input, live)
	if rerr := <-recover; rerr != nil {
		return rep, errors.Join(err, fmt.Errorf("put the original images back: %w", rerr))
	}
	if err == nil {
		rep.Seconds = time.Since(start).Seconds()
		log.Info("mounts restored and verified", "mode", rep.Mode, "namespaces", rep.Namespaces, "mounts", rep.Mounts,
			"made", rep.Created, "steps", rep.Steps, "helpers", rep.Helpers, "syscalls", rep.Result.Syscalls, "seconds", rep.Seconds)
	}
	return rep, err
}

// completeRestore makes what CRIU was not given and verifies the result.
func completeRestore(d *images.Dir, root int, cfg Config, log *slog.Logger, man *Manifest, input []forest.NamespaceMounts, live *restore.PreparedLive) (*Report, error) {
	if live != nil {
		defer live.Close()
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
		var res *restore.LiveResult
		if live != nil {
			res, err = live.Finish(nsPaths)
		} else {
			var opt restore.LiveOptions
			if opt, err = liveOptions(d, cfg, log, man, judgeLive); err == nil {
				res, err = restore.ApplyLive(input, nsPaths, opt)
			}
		}
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
