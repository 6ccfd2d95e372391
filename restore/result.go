package restore

import (
	"strconv"
	"time"
)

// Result says what a restore made.
type Result struct {
	Namespaces []NamespaceResult `json:"namespaces"`
	Helpers    int               `json:"helpers"`
	Phases     []PhaseTime       `json:"phases"`
	// Ops is the time spent in each kind of step.
	Ops      map[Op]*PhaseTime `json:"ops,omitempty"`
	Syscalls int               `json:"syscalls"`
}

// NamespaceResult is one restored namespace.
type NamespaceResult struct {
	ID  uint32 `json:"id"`
	Pin string `json:"pin"`
	// Count is the number of mounts restored in the namespace.
	Count int `json:"count"`
	// Mounts maps image mount ids to the new mount ids (Options.MountIDs).
	Mounts map[uint32]uint64 `json:"mounts,omitempty"`
}

// PhaseTime is the time one phase of the restore took.
type PhaseTime struct {
	Phase   string  `json:"phase"`
	Steps   int     `json:"steps"`
	Seconds float64 `json:"seconds"`
}

// Phase names the part of a restore a step belongs to.
func (p *Plan) Phase(s Step) string {
	switch s.Op {
	case OpCreateNamespace, OpNewSuperblock, OpFillTmpfs, OpOpenExternal, OpSetIDMap:
		return "create"
	case OpBind:
		if p.Handles[s.Handle].Helper {
			return "sharing"
		}
		return "create"
	case OpAttach:
		return "assemble"
	case OpSetGroup, OpMakeSlave, OpMakeShared:
		return "sharing"
	case OpMakeUnbindable, OpSetFlags:
		return "flags"
	case OpOpenLive, OpUnstack, OpOpenHost:
		return "open"
	}
	return "finish"
}

// PinName is the pin file of namespace id in a pin dir.
func PinName(id uint32) string { return "mntns-" + strconv.FormatUint(uint64(id), 10) }

// Len is the number of namespaces a plan restores.
func (p *Plan) Len() int { return len(p.Namespaces) }

// account adds n steps of op in phase that took d.
func (r *Result) account(op Op, phase string, n int, d time.Duration) {
	r.addTime(phase, n, d)
	if r.Ops == nil {
		r.Ops = map[Op]*PhaseTime{}
	}
	if r.Ops[op] == nil {
		r.Ops[op] = &PhaseTime{Phase: string(op)}
	}
	r.Ops[op].Steps += n
	r.Ops[op].Seconds += d.Seconds()
}

func (r *Result) addTime(phase string, n int, d time.Duration) {
	if k := len(r.Phases); k > 0 && r.Phases[k-1].Phase == phase {
		r.Phases[k-1].Steps += n
		r.Phases[k-1].Seconds += d.Seconds()
		return
	}
	for i := range r.Phases {
		if r.Phases[i].Phase == phase {
			r.Phases[i].Steps += n
			r.Phases[i].Seconds += d.Seconds()
			return
		}
	}
	r.Phases = append(r.Phases, PhaseTime{Phase: phase, Steps: n, Seconds: d.Seconds()})
}
