package restore

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/mntv2/mntv2/forest"
	"github.com/mntv2/mntv2/images"
)

// LiveOptions say how ApplyLive finishes namespaces someone else (CRIU)
// restored from images mntv2 rewrote.
type LiveOptions struct {
	Log *slog.Logger
	// RootNS is the root task's mount namespace (0: the first).
	RootNS uint32
	// Helpers are the mounts added to the images (strip mode).
	Helpers []HelperMount
	// Kept, when set, are the only mounts CRIU was given (reduce mode):
	// ApplyLive makes the others.
	Kept map[MountRef]string
	// Images holds the tmpfs content of the mounts ApplyLive makes.
	Images *images.Dir
	// HostLenient: see Input.HostLenient.
	HostLenient bool
	// Hooks: see Options.Hooks (tests only).
	Hooks Hooks
	// Stop, when closed, stops the restore before its next step and rolls
	// back what it made (see Options.Stop).
	Stop <-chan struct{}
	// Judge, when set, decides from what Verify found whether the
	// restore stands; its error rolls back what ApplyLive made. It is
	// given which mounts ApplyLive made.
	Judge func(diffs []forest.Difference, made map[MountRef]bool) error
}

// LiveResult says what ApplyLive did and found.
type LiveResult struct {
	Namespaces int    `json:"namespaces"`
	Mounts     int    `json:"mounts"`
	Created    int    `json:"created"` // mounts made (reduce mode)
	Steps      int    `json:"steps"`
	Helpers    int    `json:"helpers"`
	Result     Result `json:"result"`
	// Where the time went: reading and matching the restored namespaces
	// (PlanSeconds of it building the images' trees and planning beside
	// the read), applying, verifying.
	ReadSeconds   float64 `json:"read_seconds"`
	PlanSeconds   float64 `json:"plan_seconds"`
	ApplySeconds  float64 `json:"apply_seconds"`
	VerifySeconds float64 `json:"verify_seconds"`
	// Differences are what Verify found afterwards; Warnings what the
	// plan restored less exactly than the images say (lenient).
	Differences []forest.Difference `json:"differences"`
	Warnings    []string            `json:"warnings,omitempty"`
	// Made are the mounts ApplyLive made (reduce mode): a difference of
	// their tree or flags is mntv2's, not CRIU's.
	Made map[MountRef]bool `json:"-"`
	// EarlySteps ran before the restored namespaces existed (PrepareLive),
	// in EarlySeconds.
	EarlySteps   int     `json:"early_steps,omitempty"`
	EarlySeconds float64 `json:"early_seconds,omitempty"`
	// AdvancedSteps ran in the restored namespaces before Finish
	// (PreparedLive.Advance), in AdvancedSeconds.
	AdvancedSteps   int     `json:"advanced_steps,omitempty"`
	AdvancedSeconds float64 `json:"advanced_seconds,omitempty"`
}

// ApplyLive finishes the restored namespaces at nsPaths (image namespace
// id -> nsfs file) of the images' namespaces input: it makes the mounts
// CRIU was not given (reduce mode), applies the sharing of every mount,
// unbindable and the flags of what it made, then verifies each namespace
// against the images. It runs in the restorer's mount namespace, whose
// mounts are the host side of external sharing.
func ApplyLive(input []forest.NamespaceMounts, nsPaths map[uint32]string, opt LiveOptions) (*LiveResult, error) {
	p, err := prepareLive(input, nsPaths, opt, false)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	return p.Finish(nsPaths)
}

// PreparedLive is ApplyLive made ready before the restored namespaces
// exist: the images' trees and, unless external sharing needs the restored
// trees to find its host side, the plan, whose steps that need no restored
// namespace have run (StartEarly). Finish it, or Close it.
type PreparedLive struct {
	opt                LiveOptions
	log                *slog.Logger
	start              time.Time
	planned            time.Duration
	ids                []uint32
	original, restored *forest.Forest
	in                 Input
	liveIn             *LiveInput
	plan               *Plan
	early              *Early
	trees              []*forest.Forest
	errs               []error
	readers            sync.WaitGroup
	grown              chan struct{}
	reading            bool
	EarlySteps         int
	EarlySeconds       float64

	// Advance: its goroutine's end, the namespaces it read, its error.
	advance       chan struct{}
	stopAdvance   chan struct{}
	stopOnce      sync.Once
	advanced      map[uint32]*LiveNamespace
	advanceErr    error
	advancedSteps int
	advancedTook  time.Duration
}

// PrepareLive prepares ApplyLive of input (see PreparedLive).
func PrepareLive(input []forest.NamespaceMounts, opt LiveOptions) (*PreparedLive, error) {
	return prepareLive(input, nil, opt, true)
}

func prepareLive(input []forest.NamespaceMounts, nsPaths map[uint32]string, opt LiveOptions, early bool) (*PreparedLive, error) {
	p := &PreparedLive{opt: opt, log: opt.Log, start: time.Now(), grown: make(chan struct{})}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.ids = make([]uint32, len(input))
	for i := range input {
		p.ids[i] = input[i].ID
	}
	if nsPaths != nil {
		// The restored namespaces are read first, each on a thread of
		// its own (the kernel takes about 1.3 us a mount to write
		// mountinfo): the images' trees are built and the plan made
		// meanwhile.
		p.read(nsPaths)
	}
	ok := false
	defer func() {
		if !ok {
			p.Close()
		}
	}()
	var err error
	if p.original, err = forest.BuildImages(input); err != nil {
		close(p.grown)
		return nil, fmt.Errorf("images: %w", err)
	}
	// Grow the fd table (an RCU grace period) meanwhile; its passing fd
	// is closed before Finish returns.
	go func() { GrowFdTable(FdsFor(p.original)); close(p.grown) }()
	full, restored, helperSet, err := liveForests(input, p.original, opt)
	if err != nil {
		return nil, err
	}
	p.restored = restored
	p.liveIn = &LiveInput{Helpers: helperSet, Kept: opt.Kept}
	p.in = Input{Forest: full, Live: p.liveIn, RootNS: opt.RootNS, HostLenient: opt.HostLenient, Auto: true}
	if opt.Kept != nil && opt.Images != nil {
		if p.in.TmpfsContent, err = tmpfsContent(opt.Images); err != nil {
			return nil, err
		}
	}
	// The plan needs the restored trees only to find the host's side of
	// external sharing; otherwise it is made now.
	if !NeedsHost(full) {
		if p.plan, err = NewLivePlan(p.in); err != nil {
			return nil, err
		}
		if early {
			if p.early, err = StartEarly(p.plan, Options{Log: p.log, Hooks: opt.Hooks, Images: opt.Images}); err != nil {
				return nil, err
			}
			p.EarlySteps, p.EarlySeconds = p.early.Steps(), p.early.Seconds
		}
	}
	p.planned = time.Since(p.start)
	ok = true
	return p, nil
}

// SetLog makes Finish log to l, and stop as LiveOptions.Stop says when
// stop is closed.
func (p *PreparedLive) SetLog(l *slog.Logger, stop <-chan struct{}) {
	p.waitAdvance()
	p.log, p.opt.Log, p.opt.Stop = l, l, stop
	if p.early != nil && p.early.a != nil {
		p.early.a.opt.Log = l
	}
}

// Advance starts, on a goroutine, what Finish can do in the restored
// namespaces at nsPaths (some of them) while CRIU still restores the
// tasks: see Early.Advance. Once only, and only for a completion whose
// early steps ran; a namespace that cannot be read or does not match is
// left to Finish, which says why. If ready is set, it runs first and
// says whether the namespaces are there yet; it is to give up when its
// channel closes, as Finish, SetLog or Close begin (they wait for the
// steps Advance began).
func (p *PreparedLive) Advance(nsPaths map[uint32]string, ready func(stop <-chan struct{}) bool) {
	if p.early == nil || p.advance != nil {
		return
	}
	p.advance, p.stopAdvance = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.advance)
		if ready != nil && !ready(p.stopAdvance) {
			return
		}
		live := map[uint32]*LiveNamespace{}
		for _, ns := range p.restored.Namespaces {
			path, ok := nsPaths[ns.ID]
			if !ok {
				continue
			}
			f, err := readLive(path, ns.ID)
			if err != nil {
				continue
			}
			if ln, err := liveNamespace(ns, f.Namespaces[0], path); err == nil {
				live[ns.ID] = ln
			}
		}
		if len(live) == 0 {
			return
		}
		p.advanced = live
		start := time.Now()
		p.advancedSteps, p.advanceErr = p.early.Advance(live)
		p.advancedTook = time.Since(start)
	}()
}

// liveNamespace matches a namespace CRIU restored, as read (lns), with
// the part of the images it was given (ns).
func liveNamespace(ns, lns *forest.Namespace, nsPath string) (*LiveNamespace, error) {
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
	// Verify reports it by its kind.
	ln := &LiveNamespace{NSPath: nsPath, Tree: lns, Mounts: make(map[uint32]*forest.Mount, len(m.Pairs))}
	for e, f := range m.Pairs {
		ln.Mounts[e.ID] = f
	}
	return ln, nil
}

// noneMadeYet says, in reduce mode, whether a mount this completion is to
// make is in the restored namespace lns already: another completion began
// there and is gone (a resident hook that died after post-setup-
// namespaces), and making the mounts again would stack them on its.
func (p *PreparedLive) noneMadeYet(id uint32, lns *forest.Namespace) error {
	if p.opt.Kept == nil {
		return nil
	}
	for _, ns := range p.original.Namespaces {
		if ns.ID != id {
			continue
		}
		for e, f := range forest.Match(ns, lns).Pairs {
			if _, kept := p.opt.Kept[MountRef{id, e.ID}]; !kept {
				return fmt.Errorf("namespace %d: mount %d (%s), which CRIU was not given, is there already (mount %d): a completion begun before post-restore is gone; not making it again",
					id, e.ID, e.Mountpoint, f.ID)
			}
		}
	}
	return nil
}

// waitAdvance stops Advance's wait for its namespaces and waits for the
// steps it began, if it was started.
func (p *PreparedLive) waitAdvance() {
	if p.advance != nil {
		p.stopOnce.Do(func() { close(p.stopAdvance) })
		<-p.advance
	}
}

// read starts reading the restored namespaces (but those Advance read).
func (p *PreparedLive) read(nsPaths map[uint32]string) {
	p.reading = true
	p.trees = make([]*forest.Forest, len(p.ids))
	p.errs = make([]error, len(p.ids))
	for i, id := range p.ids {
		if p.advanced[id] != nil {
			continue
		}
		p.readers.Add(1)
		go func() {
			defer p.readers.Done()
			p.trees[i], p.errs[i] = readLive(nsPaths[id], id)
		}()
	}
}

// Close releases what Finish did not: the early steps' mounts, readers.
func (p *PreparedLive) Close() {
	p.waitAdvance()
	p.readers.Wait()
	if p.early != nil {
		p.early.Close()
		p.early = nil
	}
	if p.grown != nil {
		<-p.grown
		p.grown = nil
	}
}

// Finish is the rest of ApplyLive, in the restored namespaces at nsPaths.
func (p *PreparedLive) Finish(nsPaths map[uint32]string) (*LiveResult, error) {
	defer p.Close()
	opt, log := p.opt, p.log
	p.waitAdvance()
	if p.advanceErr != nil {
		return nil, fmt.Errorf("apply: %w", p.advanceErr)
	}
	if !p.reading {
		p.start = time.Now()
		p.read(nsPaths)
	}
	p.readers.Wait()
	byID := make(map[uint32]int, len(p.ids))
	for i, id := range p.ids {
		if p.errs[i] != nil {
			return nil, p.errs[i]
		}
		byID[id] = i
	}
	live := map[uint32]*LiveNamespace{}
	for _, ns := range p.restored.Namespaces {
		if ln := p.advanced[ns.ID]; ln != nil {
			live[ns.ID] = ln
			continue
		}
		ln, err := liveNamespace(ns, p.trees[byID[ns.ID]].Namespaces[0], nsPaths[ns.ID])
		if err != nil {
			return nil, err
		}
		if err := p.noneMadeYet(ns.ID, ln.Tree); err != nil {
			return nil, err
		}
		live[ns.ID] = ln
	}
	plan := p.plan
	if plan == nil {
		host, err := hostMounts()
		if err != nil {
			return nil, err
		}
		p.liveIn.HostPaths, p.liveIn.NoHost, p.liveIn.HostPeers = HostPaths(p.in.Forest, opt.RootNS, live, host)
		if plan, err = NewLivePlan(p.in); err != nil {
			return nil, err
		}
	}
	for _, w := range plan.Warnings {
		log.Warn("post-restore: " + w)
	}
	readDone := time.Now()
	original := p.original
	out := &LiveResult{Namespaces: len(live), Mounts: original.Len(), Steps: len(plan.Steps), Helpers: plan.Helpers,
		Warnings: plan.Warnings, Made: map[MountRef]bool{}, EarlySteps: p.EarlySteps, EarlySeconds: p.EarlySeconds, AdvancedSteps: p.advancedSteps, AdvancedSeconds: p.advancedTook.Seconds()}
	if opt.Kept != nil {
		for _, ns := range original.Namespaces {
			for _, m := range ns.Mounts {
				if _, ok := opt.Kept[MountRef{ns.ID, m.ID}]; !ok {
					out.Made[MountRef{ns.ID, m.ID}] = true
				}
			}
		}
		out.Created = len(out.Made)
	}
	// Verified before Apply ends, so that a judged failure still rolls
	// back what Apply made on filesystems that outlive the restore.
	var vstart time.Time
	check := func() error {
		vstart = time.Now()
		var err error
		out.Differences, err = Verify(original, nsPaths)
		out.VerifySeconds = time.Since(vstart).Seconds()
		if err == nil && opt.Judge != nil {
			err = opt.Judge(out.Differences, out.Made)
		}
		return err
	}
	var res *Result
	var err error
	if p.early != nil {
		early := p.early
		p.early = nil
		res, err = early.Finish(live, check, opt.Stop)
	} else {
		res, err = Apply(plan, Options{Live: live, Log: log, Hooks: opt.Hooks, Images: opt.Images, Check: check, Stop: opt.Stop})
	}
	if res != nil {
		out.Result = *res
	}
	if !vstart.IsZero() {
		out.ReadSeconds, out.PlanSeconds, out.ApplySeconds = readDone.Sub(p.start).Seconds(), p.planned.Seconds(), vstart.Sub(readDone).Seconds()
	}
	if err != nil {
		var se *StepError
		if errors.As(err, &se) || out.Differences == nil {
			return out, fmt.Errorf("apply: %w", err)
		}
		return out, err
	}
	return out, nil
}

// liveForests builds what the plan works on (the images plus helper
// mounts) and what CRIU restored (that, or in reduce mode the kept mounts
// only), as many namespaces as input, in its order.
func liveForests(input []forest.NamespaceMounts, original *forest.Forest, opt LiveOptions) (full, restored *forest.Forest, helperSet map[MountRef]bool, err error) {
	full, helperSet = original, map[MountRef]bool{}
	if len(opt.Helpers) > 0 {
		with := make([]forest.NamespaceMounts, len(input))
		for i := range input {
			with[i] = forest.NamespaceMounts{ID: input[i].ID, Mounts: append([]forest.Mount(nil), input[i].Mounts...)}
			for _, h := range opt.Helpers {
				if h.NS == input[i].ID {
					with[i].Mounts = append(with[i].Mounts, h.Mount)
					helperSet[MountRef{NS: h.NS, Mount: h.Mount.ID}] = true
				}
			}
		}
		if full, err = forest.Build(with); err != nil {
			return nil, nil, nil, fmt.Errorf("images with mntv2's helper mounts: %w", err)
		}
	}
	if opt.Kept == nil {
		return full, full, helperSet, nil
	}
	kept := make([]forest.NamespaceMounts, len(input))
	for i := range input {
		kept[i].ID = input[i].ID
		for _, m := range input[i].Mounts {
			if _, ok := opt.Kept[MountRef{input[i].ID, m.ID}]; ok {
				kept[i].Mounts = append(kept[i].Mounts, m)
			}
		}
	}
	if restored, err = forest.Build(kept); err != nil {
		return nil, nil, nil, fmt.Errorf("the mounts left to CRIU: %w", err)
	}
	return full, restored, helperSet, nil
}

// Verify compares the namespaces at nsPaths with the expected forest.
func Verify(expected *forest.Forest, nsPaths map[uint32]string) ([]forest.Difference, error) {
	paths := make(map[uint32]string, len(expected.Namespaces))
	for _, ns := range expected.Namespaces {
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
	return forest.Compare(expected, ff), nil
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
// (the restorer's), the host side of external sharing. It reads
// /proc/thread-self on a locked thread: in a Go program the main thread
// (what /proc/PID shows) may be left in another namespace.
func hostMounts() ([]forest.Mount, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	nm, err := forest.ReadMountinfoFile("/proc/thread-self/mountinfo", 0)
	if err != nil {
		return nil, err
	}
	return nm.Mounts, nil
}
