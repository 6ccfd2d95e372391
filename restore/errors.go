package restore

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/mntv2/mntv2/internal/sysx"
)

// StepError is a failed step of a restore: which step, which mount, which
// syscall and errno. Nothing of the restore is left behind when it is
// returned.
type StepError struct {
	Index   int    // index of the step in the plan
	Step    Step   // the step
	What    string // the mount: "namespace 10, mount 45 (/tmp/p1)", or a source/helper
	Syscall string // open_tree, move_mount, ...
	Err     error  // usually a syscall.Errno

	// inErr: Err's text names the syscall itself (it failed on an object
	// the text names first: an archive entry, a host path).
	inErr bool
}

func (e *StepError) Error() string {
	msg := fmt.Sprintf("step %d (%s) for %s: ", e.Index, e.Step.Op, e.What)
	if e.Syscall != "" && !e.inErr {
		msg += e.Syscall + ": "
	}
	return msg + e.Err.Error()
}

func (e *StepError) Unwrap() error { return e.Err }

// Errno is the errno of the failed syscall, or 0.
func (e *StepError) Errno() syscall.Errno {
	var errno syscall.Errno
	if errors.As(e.Err, &errno) {
		return errno
	}
	return 0
}

// sysError names the syscall and the object it failed on.
type sysError = sysx.Error

func sysErr(call string, err error) error { return sysx.Wrap(call, err) }

// ErrInjected is the error of a syscall failed on purpose (Hooks.FailSyscall).
var ErrInjected = errors.New("injected failure")

// ErrStopped is the cause of a restore stopped by Options.Stop.
var ErrStopped = errors.New("stopped by a signal; rolled back")

// Hooks are a restore's test and robustness hooks. The CLI and the plugin
// build them from the environment; library code never reads it.
type Hooks struct {
	// FailSyscall makes the N-th mount syscall (counting from 1) fail with
	// ErrInjected: for fault-injection tests.
	FailSyscall int
	// BeforeStep, when set, runs before each step (on the step's thread).
	BeforeStep func(plan *Plan, s Step)
	// HideFeature makes the kernel probe whose name contains it fail, as on
	// a kernel without the feature (Preflight).
	HideFeature string
}
