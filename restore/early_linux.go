package restore

import (
	"runtime"
	"time"
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
	if err := a.startLive(); err != nil {
		return nil, &StepError{Index: -1, Step: step("prepare"), What: "restored namespaces", Err: err}
	}
	return a.run(e.done, e.res)
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
// of the sharing only the MS_SHARED of a group born peers runs early (an
// attach under a shared mount would propagate).
func (a *applier) earlySteps() []bool {
	done := make([]bool, len(a.plan.Steps))
	ready := make([]bool, len(a.plan.Handles))
	moved := make([]bool, len(a.plan.Handles)) // attached by a step left for later
	ok := func(hs ...Handle) bool {
		for _, h := range hs {
			if h == NoHandle || !ready[h] {
				return false
			}
		}
		return true
	}
	for i, s := range a.plan.Steps {
		switch s.Op {
		case OpNewSuperblock:
			// (Not one a user namespace owns: it may not exist yet.)
			done[i] = !s.InNS && !s.UserNS
			ready[s.Handle] = done[i]
		case OpFillTmpfs, OpSetIDMap:
			done[i] = ok(s.Handle)
		case OpMakeShared:
			// A group's representative its members are cloned from
			// (bornPeers), before anything attaches it: once every step
			// before it on the mount ran early, its own attach included,
			// nothing left for later attaches under it or clones it.
			done[i] = ok(s.Handle) && !moved[s.Handle]
		case OpBind:
			info := a.plan.Handles[s.From]
			done[i] = ok(s.From) && !s.Deleted && !info.Root && !info.Live && !info.Helper
			ready[s.Handle] = done[i]
		case OpAttach:
			done[i] = ok(s.Handle, s.Parent) && !s.Persistent
		}
		if done[i] {
			continue
		}
		reads := []Handle{s.Handle, s.From, s.Parent}
		if s.Op == OpAttach {
			// Moving a mount does not change what is on it: what is
			// attached to it early moves with it.
			reads = []Handle{s.Parent}
			if s.Handle >= 0 && int(s.Handle) < len(moved) {
				moved[s.Handle] = true
			}
		}
		for _, h := range reads {
			if h >= 0 && int(h) < len(ready) {
				ready[h] = false
			}
		}
	}
	return done
}
