package restore

import (
	"runtime"
	"strings"
	"time"

	"github.com/mntv2/mntv2/forest"
)

// Early is an Apply of a live plan begun before the namespaces it finishes
// exist: CRIU's hook makes the plan at pre-restore and, while CRIU restores
// the tasks, builds what needs no restored namespace: new superblocks and
// their tmpfs content, binds of them, and those attached to one another
// (a detached tree takes mounts since Linux 6.15). Finish runs the rest
// once the namespaces exist.
type Early struct {
	a    *applier
	done []bool
	res  *Result
	// Seconds is what the early steps took.
	Seconds float64
}

// StartEarly runs the early steps of plan (see earlySteps). On failure it
// leaves nothing behind. Close or Finish the result.
func StartEarly(plan *Plan, opt Options) (*Early, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := time.Now()
	opt.Live, opt.Check = nil, nil
	a := newApplier(plan, opt)
	if err := a.prepareBase(); err != nil {
		a.release()
		return nil, &StepError{Index: -1, Step: step("prepare"), What: "this mount namespace", Err: err}
	}
	e := &Early{a: a, done: a.earlySteps(), res: &Result{Helpers: plan.Helpers}}
	for i := 0; i < len(plan.Steps); {
		if !e.done[i] {
			i++
			continue
		}
		j := i
		for j < len(plan.Steps) && e.done[j] {
			j++
		}
		if err := a.runBatch(0, i, j, e.res); err != nil {
			a.rollback()
			a.release()
			return nil, err
		}
		i = j
	}
	e.Seconds = time.Since(start).Seconds()
	return e, nil
}

// Steps is how many steps ran early.
func (e *Early) Steps() int {
	n := 0
	for _, d := range e.done {
		if d {
			n++
		}
	}
	return n
}

// Finish runs the steps left, in the restored namespaces live, then check
// (see Options.Check and Options.Stop). On failure it rolls back
// everything, the early steps' work included.
func (e *Early) Finish(live map[uint32]*LiveNamespace, check func() error, stop <-chan struct{}) (res *Result, err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	a := e.a
	e.a = nil
	a.opt.Live, a.opt.Check, a.opt.Stop = live, check, stop
	// The mounts are done with once verified: their fds are closed after
	// Finish returns, as CRIU resumes the tasks.
	a.closeLater = true
	defer func() {
		if err != nil {
			a.rollback()
		} else {
			a.closeAsync = true
		}
		a.release()
	}()
	if err := a.startLive(a.plan.Namespaces); err != nil {
		return nil, &StepError{Index: -1, Step: step("prepare"), What: "restored namespaces", Err: err}
	}
	return a.run(e.done, e.res)
}

// Advance runs, before Finish, the steps that need only the restored
// namespaces in live and nothing CRIU does after it made them: the
// restored mounts opened (by path: a namespace whose mounts would have to
// be peeled off to be opened is left alone, since CRIU opens the tasks'
// files meanwhile) and what is attached under them, up to the sharing
// phase (see advanceSteps). CRIU's post-setup-namespaces is such a time:
// the root task's namespace holds every mount CRIU makes, and CRIU
// restores the tasks' memory and files until post-restore. It returns how
// many steps ran; on failure, Finish is not to be called (Close rolls
// everything back).
func (e *Early) Advance(live map[uint32]*LiveNamespace) (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	a := e.a
	a.opt.Live = live
	if err := a.startLive(nil); err != nil {
		return 0, err
	}
	avail := map[uint32]bool{}
	var ids []uint32
	for _, id := range a.plan.Namespaces {
		ln, st := live[id], a.live[id]
		if ln == nil {
			continue
		}
		if st != nil {
			if ok, err := wantedExposed(ln, st); err != nil || !ok {
				continue // Finish says what is wrong, or peels
			}
		}
		avail[id] = true
		ids = append(ids, id)
	}
	// An attach under a read-only restored mount may need a moment of
	// rw on it (attach), which CRIU, making a ghost file there meanwhile
	// (criu/mount.c try_remount_writable), could undo under it or have
	// undone: those wait for Finish.
	roParent := func(s Step) bool {
		info := a.plan.Handles[s.Parent]
		if !info.Live {
			return false
		}
		ln := live[info.NS]
		if ln == nil {
			return true
		}
		m := ln.Mounts[info.Mount]
		return m == nil || m.Flags&forest.ReadOnly != 0
	}
	sel := a.advanceSteps(e.done, avail, roParent)
	skip := make([]bool, len(sel))
	n := 0
	for i := range sel {
		skip[i] = !sel[i]
		if sel[i] {
			n++
		}
	}
	if n == 0 {
		return 0, nil
	}
	if err := a.startLive(ids); err != nil {
		return 0, &StepError{Index: -1, Step: step("prepare"), What: "restored namespaces", Err: err}
	}
	if err := a.runSteps(skip, e.res); err != nil {
		return 0, err
	}
	for i := range sel {
		e.done[i] = e.done[i] || sel[i]
	}
	return n, nil
}

// advanceSteps marks the steps Advance runs, given the steps done and the
// namespaces available: opening restored mounts there, binds of mounts
// made by the completion, and attaches whose mounts are ready (as in
// earlySteps), but those hold holds back; and nothing from the first step
// of another kind on: the sharing phase and the flags come after every
// attach in a live plan, and run at Finish.
func (a *applier) advanceSteps(done []bool, avail map[uint32]bool, hold func(Step) bool) []bool {
	sel := make([]bool, len(a.plan.Steps))
	r := newReadiness(len(a.plan.Handles))
	ready, ok := r.ready, r.ok
	// Attaches left for later, by parent: a later attach under the same
	// parent goes ahead only where neither mountpoint contains the other
	// (siblings apart; "covered siblings before what covers them" kept).
	deferred := map[Handle][]string{}
	clear := func(s Step) bool {
		for _, d := range deferred[s.Parent] {
			if d == s.Path || d == "" || s.Path == "" || strings.HasPrefix(s.Path, d+"/") || strings.HasPrefix(d, s.Path+"/") {
				return false
			}
		}
		return true
	}
	for i, s := range a.plan.Steps {
		if done[i] {
			if s.Op == OpNewSuperblock || s.Op == OpBind {
				ready[s.Handle] = true
			}
			continue
		}
		switch s.Op {
		case OpOpenLive:
			sel[i] = avail[s.NS]
			ready[s.Handle] = sel[i]
		case OpBind:
			// Not from a restored mount: what is in it is CRIU's until
			// the tasks' files are restored (a socket a bind's root is,
			// say, is unlinked and bound again by its listener then).
			info := a.plan.Handles[s.From]
			sel[i] = ok(s.From) && !s.Deleted && !info.Helper && !info.Live && !info.Root && a.executor(s) == 0
			ready[s.Handle] = sel[i]
		case OpAttach:
			sel[i] = ok(s.Handle, s.Parent) && clear(s) && avail[s.NS] && !hold(s)
		case OpNewSuperblock, OpFillTmpfs, OpSetIDMap, OpOpenExternal:
		default:
			return sel
		}
		switch {
		case sel[i]:
		case s.Op == OpAttach && len(deferred[s.Parent]) < 64:
			deferred[s.Parent] = append(deferred[s.Parent], s.Path)
		default:
			r.later(s)
		}
	}
	return sel
}

// readiness follows, step by step through a plan, which handles are
// ready for a step run ahead of the others: made by a step run ahead, and
// read by no step before it that was left for later.
type readiness struct {
	ready []bool
	moved []bool // attached by a step left for later
}

func newReadiness(handles int) *readiness {
	return &readiness{ready: make([]bool, handles), moved: make([]bool, handles)}
}

func (r *readiness) ok(hs ...Handle) bool {
	for _, h := range hs {
		if h == NoHandle || !r.ready[h] {
			return false
		}
	}
	return true
}

// later notes s left for later: what it reads is not ready from now on.
// Moving a mount does not change what is on it (what was attached to it
// ahead moves with it): an attach reads its parent only.
func (r *readiness) later(s Step) {
	reads := []Handle{s.Handle, s.From, s.Parent}
	if s.Op == OpAttach {
		reads = []Handle{s.Parent}
		if s.Handle >= 0 && int(s.Handle) < len(r.moved) {
			r.moved[s.Handle] = true
		}
	}
	for _, h := range reads {
		if h >= 0 && int(h) < len(r.ready) {
			r.ready[h] = false
		}
	}
}

// Close undoes the early steps of an Early never finished.
func (e *Early) Close() {
	if e.a != nil {
		e.a.rollback()
		e.a.release()
		e.a = nil
	}
}

// earlySteps marks the steps that need no restored namespace: new
// superblocks (not resolved in a namespace), their fills, binds of them
// and attaches of those under one another. A handle a later step reads
// stays early only while every step before it that reads the handle was
// early too, so each mount sees its steps in the plan's order (moving a
// mount is not reading it: what was attached to it early moves with it);
// of the sharing only MS_SHARED runs early, on a mount every earlier step
// of which ran early, its attach included (a born group's representative,
// or one made shared after an assembly all done early): no step left for
// later then attaches under it, or clones it, before it is shared (an
// attach under a shared mount would propagate).
func (a *applier) earlySteps() []bool {
	done := make([]bool, len(a.plan.Steps))
	r := newReadiness(len(a.plan.Handles))
	ready, moved, ok := r.ready, r.moved, r.ok
	for i, s := range a.plan.Steps {
		switch s.Op {
		case OpNewSuperblock:
			// (Not one a user namespace owns: it may not exist yet.)
			done[i] = !s.InNS && !s.UserNS
			ready[s.Handle] = done[i]
		case OpFillTmpfs, OpSetIDMap:
			done[i] = ok(s.Handle)
		case OpMakeShared:
			// Once every step before it on the mount ran early, its
			// own attach included, nothing left for later attaches
			// under it or clones it before it is shared.
			done[i] = ok(s.Handle) && !moved[s.Handle]
		case OpBind:
			info := a.plan.Handles[s.From]
			done[i] = ok(s.From) && !s.Deleted && !info.Root && !info.Live && !info.Helper
			ready[s.Handle] = done[i]
		case OpAttach:
			done[i] = ok(s.Handle, s.Parent) && !s.Persistent
		}
		if !done[i] {
			r.later(s)
		}
	}
	return done
}
